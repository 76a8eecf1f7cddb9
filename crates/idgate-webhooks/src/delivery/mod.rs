//! Delivery: one deliverer per gateway process claims messages from every subscriber's
//! outbox queue and posts them over HTTPS, the gateway's SVID as client certificate.
//!
//! Claims are leases in the shared state store, so any replica can deliver: a replica that
//! dies leaves leases that run out, and another takes the messages over (delivery is at
//! least once; `idgate-event-id` lets subscribers drop a repeat). The queue hands out at
//! most one message per session id at a time, oldest first, and none while an older one of
//! the session waits for a retry: a subscriber sees each session's events in order.
//!
//! Beside delivery, a housekeeping round purges what outlived its retention (delivered
//! copies, dead letters) and reports the outbox's depth; the queues of subscribers no longer
//! configured are found by the records of `registry` and purged the same way.

mod attempt;
#[cfg(test)]
mod lifetime_tests;
mod registry;
pub mod retry;
pub mod signature;

pub(crate) use registry::record_written;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use idgate_config::{NonJson, RetryPolicy, SubscriberConfig, WebhookConfig};
use idgate_mask::Profile;
use idgate_secrets::hmac::MIN_OWN_KEY_BYTES;
use idgate_secrets::{HmacKey, SecretError};
use idgate_store::{Nonces, Queue, QueueName, StateStore, StoreError};
use idgate_tls::client::{HttpsClient, OutboundClient};
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use tokio::sync::{Notify, watch};

use crate::metrics::{DeliveryMetrics, Depths};
use crate::outbox::{self, OutboxKeys};

/// Deliveries in flight per subscriber, each of another session.
const CONCURRENCY: usize = 16;
/// How often the queues are looked at when nothing woke the deliverer: work pushed by
/// another replica, retries coming due.
const POLL: Duration = Duration::from_millis(250);
/// How often retention is enforced and the outbox's depth reported.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// A lease outlasts an attempt by this much (masking, signing, the store's own calls).
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Delivered copies purged per queue and call.
const PURGE_BATCH: usize = 256;
/// How long the deliverer waits for one call of the state store. Off the request path, and
/// a claim's answer carries events (up to `idgate_store::CLAIM_BYTES` of them): a claim
/// given up on after the store leased its messages holds them until the leases run out.
const STORE_PATIENCE: Duration = Duration::from_secs(10);

/// The HTTPS client of one subscriber.
type DeliveryClient = HttpsClient<Full<Bytes>>;

/// The gateway's current SVID, presented to subscribers (it follows rotations); none before
/// the Workload API delivered the first.
pub type SvidSource = Arc<dyn Fn() -> Option<Arc<CertifiedKey>> + Send + Sync>;

/// A subscriber's masking profile with its pseudonym key.
#[derive(Debug, Clone)]
pub struct SubscriberMask {
    pub profile_name: Arc<str>,
    pub profile: Profile,
    pub key: Option<Arc<HmacKey>>,
    pub non_json: NonJson,
}

/// Why a subscriber cannot be put into use.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error("secret: {0}")]
    Secret(SecretError),
    #[error("ca: {0}")]
    Ca(idgate_tls::roots::CaFileError),
    #[error("{0}")]
    Queue(StoreError),
}

impl SubscriberError {
    /// The key under the subscriber's own at fault.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Secret(_) => "secret",
            Self::Ca(_) => "ca",
            Self::Queue(_) => "name",
        }
    }
}

/// One subscriber of one webhook, ready to deliver to.
pub struct Subscriber {
    pub webhook: Arc<str>,
    pub name: Arc<str>,
    pub queue: QueueName,
    pub delivered: QueueName,
    pub url: Uri,
    secret: HmacKey,
    pub mask: Option<SubscriberMask>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    pub retention: Duration,
    pub dead_letter_retention: Duration,
    pub keys: Arc<OutboxKeys>,
    roots: RootCertStore,
    /// The client, with the SVID it presents: rebuilt when the SVID rotates.
    client: Mutex<Option<(Arc<CertifiedKey>, DeliveryClient)>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("webhook", &self.webhook)
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Reads the subscriber's secret and CA file; blocking. A `pkcs11:` HMAC key stays in
    /// the token, which signs every delivery. The secret is the gateway's own (the operator
    /// makes it), so it is held to [`MIN_OWN_KEY_BYTES`] from every source, as a pseudonym
    /// key is; in a token, before every signature too.
    pub fn load(
        webhook: &WebhookConfig,
        config: &SubscriberConfig,
        keys: Arc<OutboxKeys>,
        mask: Option<SubscriberMask>,
    ) -> Result<Self, SubscriberError> {
        let secret = HmacKey::load_min(&config.secret, Duration::ZERO, MIN_OWN_KEY_BYTES)
            .map_err(SubscriberError::Secret)?;
        let roots =
            idgate_tls::roots::roots_with_ca(config.ca.as_deref()).map_err(SubscriberError::Ca)?;
        Ok(Self {
            webhook: webhook.name.as_str().into(),
            name: config.name.as_str().into(),
            queue: outbox::queue(&webhook.name, &config.name).map_err(SubscriberError::Queue)?,
            delivered: outbox::delivered_queue(&webhook.name, &config.name)
                .map_err(SubscriberError::Queue)?,
            url: config.url.clone(),
            secret,
            mask,
            retry: webhook.retry,
            timeout: webhook.delivery_timeout,
            retention: webhook.retention,
            dead_letter_retention: webhook.dead_letter_retention,
            keys,
            roots,
            client: Mutex::new(None),
        })
    }

    /// How long a claim lasts: longer than an attempt, so that one still under way is not
    /// taken over.
    fn lease(&self) -> Duration {
        self.timeout + LEASE_MARGIN
    }

    /// The client presenting `svid`, built anew when the SVID changed.
    fn client(
        &self,
        svid: Arc<CertifiedKey>,
    ) -> Result<DeliveryClient, idgate_tls::client::ClientError> {
        let mut cached = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((used, client)) = cached.as_ref()
            && Arc::ptr_eq(used, &svid)
        {
            return Ok(client.clone());
        }
        let client: DeliveryClient =
            OutboundClient::new(self.roots.clone(), self.timeout.min(Duration::from_secs(5)))
                .client_certificate(svid.clone())
                .pool_max_idle_per_host(CONCURRENCY)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()?;
        *cached = Some((svid, client.clone()));
        Ok(client)
    }
}

/// Every subscriber of one configuration.
#[derive(Debug, Default)]
pub struct Plan {
    pub subscribers: Vec<Arc<Subscriber>>,
}

/// The process's deliverer; see the module documentation.
pub struct Deliverer {
    store: StateStore,
    plan: ArcSwap<Plan>,
    svid: SvidSource,
    metrics: DeliveryMetrics,
    wake: Notify,
    /// Deliveries under way, by queue.
    in_flight: Mutex<HashMap<QueueName, usize>>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("subscribers", &self.plan.load().subscribers.len())
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Delivers from `store`, whose calls it bounds by [`STORE_PATIENCE`] rather than by
    /// the request path's timeout.
    pub fn new(store: StateStore, svid: SvidSource, metrics: DeliveryMetrics) -> Arc<Self> {
        Arc::new(Self {
            store: store.patient(STORE_PATIENCE),
            plan: ArcSwap::from_pointee(Plan::default()),
            svid,
            metrics,
            wake: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Delivers for these subscribers from now on (a reload replaces them).
    pub fn set_plan(&self, plan: Arc<Plan>) {
        self.plan.store(plan);
        self.wake.notify_one();
    }

    /// Looks at the queues now: an event was just written.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts delivering and housekeeping until `stop` turns true.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        tokio::spawn(self.clone().deliver_loop(stop.clone()));
        tokio::spawn(self.clone().housekeeping_loop(stop));
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<QueueName, usize>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `delivery` as a task counted in `queue`'s deliveries in flight. The count is
    /// given back by a guard when the task ends in any way — done, panicked or cancelled —
    /// so that no delivery can keep its slot and, 16 of them later, stop the queue.
    fn spawn_tracked(
        self: &Arc<Self>,
        queue: QueueName,
        delivery: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let slot = InFlight::take(self.clone(), queue);
        tokio::spawn(async move {
            let _slot = slot;
            delivery.await;
        })
    }

    async fn deliver_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failing = false;
        while !*stop.borrow() {
            let plan = self.plan.load_full();
            let mut errors = Vec::new();
            for sub in &plan.subscribers {
                let busy = self.in_flight().get(&sub.queue).copied().unwrap_or(0);
                let free = CONCURRENCY.saturating_sub(busy);
                if free == 0 {
                    continue;
                }
                // A claim is a write (in redb, a synced commit); most polls find nothing, and
                // a count is a read.
                match self.store.stats(&sub.queue, SystemTime::now()).await {
                    Ok(s) if s.ready == 0 => continue,
                    Ok(_) => {}
                    Err(e) => {
                        errors.push((sub.queue.clone(), e));
                        continue;
                    }
                }
                match self
                    .store
                    .claim(&sub.queue, free, sub.lease(), SystemTime::now())
                    .await
                {
                    Ok(claimed) => {
                        for message in claimed {
                            let (me, sub) = (self.clone(), sub.clone());
                            self.spawn_tracked(sub.queue.clone(), async move {
                                attempt::deliver(&me, &sub, message).await;
                            });
                        }
                    }
                    Err(e) => errors.push((sub.queue.clone(), e)),
                }
            }
            // One line when claiming starts failing and one when it works again.
            match (errors.first(), failing) {
                (Some((queue, e)), false) => {
                    tracing::error!(queue = queue.as_str(), error = %e, "cannot claim webhook events from the outbox; retrying");
                    failing = true;
                }
                (None, true) => {
                    tracing::info!("claiming webhook events from the outbox works again");
                    failing = false;
                }
                _ => {}
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn housekeeping_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut looking = registry::Looking::default();
        // The first round at once: it records the subscribers of this start, which a
        // restart soon after may remove.
        let mut every = tokio::time::interval(HOUSEKEEPING);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            self.housekeeping_round(&mut looking, SystemTime::now())
                .await;
        }
    }

    /// Purges what outlived its retention in the queues of the plan's subscribers and of
    /// those no longer configured, and reports the depths.
    async fn housekeeping_round(&self, looking: &mut registry::Looking, now: SystemTime) {
        let plan = self.plan.load_full();
        for sub in &plan.subscribers {
            if let Err(e) = self.housekeep(sub, now).await {
                tracing::warn!(queue = sub.queue.as_str(), error = %e, "webhook outbox housekeeping failed; trying again later");
            }
        }
        // Also with no subscriber configured: a restart may have removed the last ones.
        match (
            registry::look_after(&self.store, &plan, looking, now).await,
            looking.failing,
        ) {
            (Err(e), false) => {
                tracing::warn!(error = %e, "cannot read or record the webhook subscribers in the outbox; trying again later");
                looking.failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("the webhook subscribers in the outbox are looked after again");
                looking.failing = false;
            }
            _ => {}
        }
        if plan.subscribers.is_empty() {
            return;
        }
        if let Err(e) = Nonces::sweep(&self.store, now).await {
            tracing::warn!(error = %e, "cannot sweep expired webhook replay keys");
        }
    }

    /// Purges what outlived its retention and reports the depth of `sub`'s queues (also
    /// when the purge failed: the depths tell how far it is behind).
    async fn housekeep(&self, sub: &Subscriber, now: SystemTime) -> Result<(), StoreError> {
        let purged = purge(&self.store, sub, now).await;
        let stats = self.store.stats(&sub.queue, now).await?;
        let delivered = self.store.stats(&sub.delivered, now).await?;
        self.metrics.depths(
            &sub.webhook,
            &sub.name,
            Depths {
                ready: stats.ready,
                waiting: stats.waiting,
                leased: stats.leased,
                dead: stats.dead,
                delivered: delivered.waiting + delivered.ready + delivered.leased,
            },
        );
        purged.map(|_| ())
    }
}

/// One delivery counted in its queue's deliveries in flight, until it is dropped.
struct InFlight {
    deliverer: Arc<Deliverer>,
    queue: QueueName,
}

impl InFlight {
    fn take(deliverer: Arc<Deliverer>, queue: QueueName) -> Self {
        *deliverer.in_flight().entry(queue.clone()).or_insert(0) += 1;
        Self { deliverer, queue }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // `in_flight()` takes the lock even when poisoned: a drop during a panic still counts.
        if let Some(n) = self.deliverer.in_flight().get_mut(&self.queue) {
            *n = n.saturating_sub(1);
        }
        self.deliverer.wake.notify_one();
    }
}

/// Removes delivered copies whose retention ended (they come due in their queue; their
/// payloads are not read) and dead letters whose run of attempts began longer ago than the
/// event's maximum age plus the dead-letter retention. Returns how many went.
pub async fn purge(
    store: &impl Queue,
    sub: &Subscriber,
    now: SystemTime,
) -> Result<usize, StoreError> {
    let keep = sub.retry.max_age.saturating_add(sub.dead_letter_retention);
    purge_queues(store, &sub.queue, &sub.delivered, keep, now).await
}

/// [`purge`] of one subscriber's `queue` and its `delivered` copies, dead letters kept for
/// `keep` after their attempts began (a dead letter revived meanwhile is not deleted).
async fn purge_queues(
    store: &impl Queue,
    queue: &QueueName,
    delivered: &QueueName,
    keep: Duration,
    now: SystemTime,
) -> Result<usize, StoreError> {
    let mut purged = 0;
    loop {
        let due = store.purge_due(delivered, PURGE_BATCH, now).await?;
        purged += due;
        if due < PURGE_BATCH {
            break;
        }
    }
    for dead in store.dead_letters(queue, now).await? {
        let expired = dead
            .attempts_since
            .checked_add(keep)
            .is_some_and(|t| t <= now);
        if expired && store.delete_dead(queue, &dead.id, now).await? {
            purged += 1;
        }
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use idgate_store::MemoryStore;

    use super::*;

    fn deliverer() -> Arc<Deliverer> {
        Deliverer::new(
            StateStore::from(MemoryStore::new()),
            Arc::new(|| None),
            DeliveryMetrics::default(),
        )
    }

    #[tokio::test]
    async fn a_delivery_that_panics_gives_its_in_flight_slot_back() {
        let d = deliverer();
        let queue = outbox::queue("didit", "kyc").unwrap();
        let count = |d: &Deliverer| d.in_flight().get(&queue).copied().unwrap_or(0);
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let task = d.spawn_tracked(queue.clone(), async move {
            let _ = wait.await;
            panic!("a delivery that panics");
        });
        assert_eq!(count(&d), 1, "counted while it runs");
        go.send(()).unwrap();
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(count(&d), 0, "the panic gave the slot back");

        // As many as the queue's concurrency, each panicking: the queue is still claimable.
        for _ in 0..CONCURRENCY + 1 {
            let task = d.spawn_tracked(queue.clone(), async { panic!("again") });
            assert!(task.await.unwrap_err().is_panic());
        }
        assert_eq!(count(&d), 0);

        // Cancelled (the runtime shutting down, a task aborted): given back as well.
        let task = d.spawn_tracked(queue.clone(), std::future::pending());
        assert_eq!(count(&d), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(count(&d), 0);
    }
}
