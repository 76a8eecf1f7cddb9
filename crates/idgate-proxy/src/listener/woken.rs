//! A future polled only when it woke the task itself.
//!
//! A connection's task waits on its connection and on what may end it (its certificate's
//! expiry, the deadline for its first request, shutdown). `tokio::select!` polls every
//! branch on every wake-up, and nearly all of them (three a request) are the connection's:
//! each would poll a timer that is not due, about 150 instructions apiece. [`WokenOnly`]
//! gives its future a waker of its own that marks it before waking the task, and skips
//! the poll, for one atomic swap, when the mark is not there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// The mark, and the task to wake after setting it.
struct Mark {
    woken: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before the task is woken: the poll that follows sees it.
        self.woken.store(true, Ordering::SeqCst);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        task.wake();
    }
}

/// `inner`, polled at first, whenever the task's waker changes, and otherwise only after
/// it woke the task. For futures that finish only by waking their waker (timers, watches),
/// never for one that must see state changed under it without a wake-up.
pub(super) struct WokenOnly<'a, F> {
    inner: Pin<&'a mut F>,
    mark: Arc<Mark>,
    waker: Waker,
    /// The task's waker as the mark last had it; `None` before the first poll.
    task: Option<Waker>,
}

impl<'a, F: Future> WokenOnly<'a, F> {
    pub(super) fn new(inner: Pin<&'a mut F>) -> Self {
        let mark = Arc::new(Mark {
            woken: AtomicBool::new(false),
            task: Mutex::new(Waker::noop().clone()),
        });
        Self {
            inner,
            waker: Waker::from(mark.clone()),
            mark,
            task: None,
        }
    }
}

impl<F: Future> Future for WokenOnly<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        match &this.task {
            Some(task) if task.will_wake(cx.waker()) => {
                if !this.mark.woken.swap(false, Ordering::SeqCst) {
                    return Poll::Pending;
                }
            }
            _ => {
                // A task waker the mark does not have yet: it is given it, and the future is
                // polled whatever the mark says.
                *this
                    .mark
                    .task
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = cx.waker().clone();
                this.task = Some(cx.waker().clone());
                this.mark.woken.store(false, Ordering::SeqCst);
            }
        }
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Counts its polls; pending until `ready` is set, and then only once woken.
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        ready: &'a AtomicBool,
        waker: &'a Mutex<Option<Waker>>,
    }

    impl Future for Counted<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// What a [`Counted`] reports: its polls, whether to finish, its last waker.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Probe {
        fn future(&self) -> Counted<'_> {
            Counted {
                polls: &self.polls,
                ready: &self.ready,
                waker: &self.waker,
            }
        }
    }

    #[test]
    fn the_future_is_polled_first_then_only_after_waking_the_task() {
        let probe = Probe::default();
        let Probe {
            polls,
            ready,
            waker,
        } = &probe;
        let mut inner = pin!(probe.future());
        let mut quiet = pin!(WokenOnly::new(inner.as_mut()));
        let task_woken = Arc::new(Flag::default());
        let task = Waker::from(task_woken.clone());
        let mut cx = Context::from_waker(&task);

        assert!(quiet.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not polled at first");
        // The task woken for something else, many times: the future is left alone.
        for _ in 0..10 {
            assert!(quiet.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert!(!task_woken.0.load(Ordering::SeqCst));

        // The future's own wake-up reaches the task and gets it polled, once.
        ready.store(true, Ordering::SeqCst);
        let own = waker.lock().unwrap().take().unwrap();
        own.wake();
        assert!(
            task_woken.0.load(Ordering::SeqCst),
            "the task was not woken"
        );
        assert!(quiet.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_task_waker_gets_the_future_polled_and_woken_through_it() {
        let probe = Probe::default();
        let Probe { polls, waker, .. } = &probe;
        let mut inner = pin!(probe.future());
        let mut quiet = pin!(WokenOnly::new(inner.as_mut()));
        let first = Arc::new(Flag::default());
        let second = Arc::new(Flag::default());
        let first_waker = Waker::from(first.clone());
        let second_waker = Waker::from(second.clone());

        assert!(
            quiet
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            quiet
                .as_mut()
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        assert_eq!(polls.load(Ordering::SeqCst), 2, "a new waker did not poll");
        waker.lock().unwrap().take().unwrap().wake();
        assert!(
            second.0.load(Ordering::SeqCst),
            "the new waker was not woken"
        );
        assert!(!first.0.load(Ordering::SeqCst), "the old waker was woken");
    }

    #[tokio::test]
    async fn a_timer_wrapped_fires_inside_select_while_other_branches_wake_the_task() {
        let sleep = pin!(tokio::time::sleep(Duration::from_millis(50)));
        let mut timer = pin!(WokenOnly::new(sleep));
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        let mut woken = 0;
        let fired = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    biased;
                    _ = ticks.tick() => woken += 1,
                    () = &mut timer => return,
                }
            }
        })
        .await;
        assert!(fired.is_ok(), "the timer never fired");
        assert!(woken > 5, "the other branch woke the task {woken} times");
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
