//! A future's box, with the future built in it.
//!
//! `Box::pin(make())` builds the future on the stack, then copies the whole of it into the
//! heap: not only what it starts with (its arguments) but the room for every state it may
//! pass through, about 5.6 KiB for a request's pipeline. [`pinned`] takes the box first and
//! builds the future in it, so only what the future starts with is written. Checked in the
//! release build: the pipeline's and the upstream exchange's boxes are filled without a
//! `memcpy` of their size.

use std::pin::Pin;

/// `make()`'s future, pinned in a box of its own, written in place.
#[inline(always)]
pub(crate) fn pinned<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_future_built_in_its_box_runs_as_boxed_with_pin() {
        let answer = async |a: u64, b: [u64; 64]| {
            tokio::task::yield_now().await;
            a + b.iter().sum::<u64>()
        };
        let in_place = pinned(|| answer(1, [2; 64])).await;
        let copied = Box::pin(answer(1, [2; 64])).await;
        assert_eq!(in_place, 129);
        assert_eq!(in_place, copied);
    }
}
