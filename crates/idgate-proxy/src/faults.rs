//! Fault injection for resilience rehearsals (`faults`, only with `[testing]
//! fault_injection = true`): which requests a route delays and which it aborts, drawn from
//! a fast random sequence seeded once per process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use idgate_config::Faults;

/// What a route's faults do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer with this status, without calling the upstream.
    Abort(StatusCode),
    /// Wait this long, then forward.
    Delay(Duration),
    None,
}

/// Draws what the route's faults do to one request: an abort first (a request aborted is
/// not also delayed), then a delay, each with its own share.
pub(crate) fn draw(faults: &Faults) -> Fault {
    if faults.abort_ppm > 0 && roll() < faults.abort_ppm {
        // Validated as 400 to 599 when the configuration was loaded.
        return Fault::Abort(
            StatusCode::from_u16(faults.abort_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        );
    }
    if faults.delay_ppm > 0 && !faults.delay.is_zero() && roll() < faults.delay_ppm {
        return Fault::Delay(faults.delay);
    }
    Fault::None
}

/// A number below a million, uniform enough for percentages: SplitMix64 over a counter
/// that every thread advances, from a seed drawn once per process. Not for secrets.
fn roll() -> u32 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without system randomness the sequence is still uniform, only predictable.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The high 32 bits, scaled to a million without the bias of a modulo.
    (((z >> 32) * 1_000_000) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(abort_ppm: u32, delay_ppm: u32) -> Faults {
        Faults {
            delay: Duration::from_millis(5),
            delay_ppm,
            abort_status: 503,
            abort_ppm,
        }
    }

    #[test]
    fn all_or_nothing_is_exact() {
        for _ in 0..10_000 {
            assert_eq!(
                draw(&faults(1_000_000, 0)),
                Fault::Abort(StatusCode::SERVICE_UNAVAILABLE)
            );
            assert_eq!(
                draw(&faults(0, 1_000_000)),
                Fault::Delay(Duration::from_millis(5))
            );
            assert_eq!(draw(&faults(0, 0)), Fault::None);
        }
    }

    #[test]
    fn shares_are_roughly_honoured() {
        let n = 100_000;
        let aborted = (0..n)
            .filter(|_| matches!(draw(&faults(100_000, 0)), Fault::Abort(_)))
            .count();
        // 10 % of 100 000: the standard deviation is about 95.
        assert!((9_000..11_000).contains(&aborted), "{aborted}");
    }
}
