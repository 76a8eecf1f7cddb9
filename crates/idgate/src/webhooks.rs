//! `idgate webhooks`: the outbox of the configured webhooks, in the configured `[state]`
//! backend (a redb file shared with the running gateway, or Redis): list what is pending,
//! dead or kept after delivery, show one message, replay dead letters or delivered events,
//! purge old ones.
//!
//! Message ids are `WEBHOOK/SUBSCRIBER/N` (the subscriber's outbox) and
//! `WEBHOOK/SUBSCRIBER/delivered/N` (a copy kept after delivery). Event bodies hold
//! personal data: `show` prints one only when asked (`--body`), decrypted with the
//! webhook's outbox key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use idgate_config::{Config, StateBackend, SubscriberConfig, WebhookConfig};
use idgate_store::{MessageId, MessageState, NewMessage, Queue, QueueName, StateStore};
use idgate_webhooks::outbox::{self, OutboxKeys, read_header};

use crate::keys::Failure;
use crate::keys::{parse_duration, rfc3339};
use rows::{Row, state_text, table};

mod rows;

#[derive(Subcommand)]
pub(crate) enum WebhooksCommand {
    /// Count each subscriber's pending, dead and delivered events, and list the pending and
    /// dead ones (never a body).
    List {
        /// The gateway's configuration file: its [[webhooks]] and [state].
        #[arg(short, long, env = "IDGATE_CONFIG")]
        config: PathBuf,
        /// Only this webhook.
        #[arg(long)]
        webhook: Option<String>,
        /// List the copies kept after delivery too.
        #[arg(long)]
        delivered: bool,
        /// One JSON object per line instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: its state, attempts, session, event id and type, last error. The
    /// body (personal data) is printed only with --body.
    Show {
        #[arg(short, long, env = "IDGATE_CONFIG")]
        config: PathBuf,
        /// WEBHOOK/SUBSCRIBER/N, or WEBHOOK/SUBSCRIBER/delivered/N.
        id: String,
        /// Decrypt the event's body with the outbox key and print it on stdout.
        #[arg(long)]
        body: bool,
    },
    /// Deliver again: a dead letter (its attempts start over), or a delivered event (as a
    /// new message, outside its session's order); with --dead, every dead letter.
    Replay {
        #[arg(short, long, env = "IDGATE_CONFIG")]
        config: PathBuf,
        /// WEBHOOK/SUBSCRIBER/N (a dead letter) or WEBHOOK/SUBSCRIBER/delivered/N.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<String>,
        /// Every dead letter (of --webhook only, when given).
        #[arg(long)]
        dead: bool,
        #[arg(long, requires = "dead")]
        webhook: Option<String>,
    },
    /// Delete delivered copies and dead letters older than DURATION (pending events are
    /// never purged). The gateway purges them itself after their retention.
    Purge {
        #[arg(short, long, env = "IDGATE_CONFIG")]
        config: PathBuf,
        /// Such as 30d, 12h or 2w.
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        #[arg(long)]
        webhook: Option<String>,
    },
}

pub(crate) fn run(command: WebhooksCommand) -> ExitCode {
    let result = match command {
        WebhooksCommand::List {
            config,
            webhook,
            delivered,
            json,
        } => Outboxes::open(&config).and_then(|o| o.list(webhook.as_deref(), delivered, json)),
        WebhooksCommand::Show { config, id, body } => {
            Outboxes::open(&config).and_then(|o| o.show(&id, body))
        }
        WebhooksCommand::Replay {
            config,
            id,
            dead,
            webhook,
        } => Outboxes::open(&config).and_then(|o| match (id, dead) {
            (Some(id), _) => o.replay(&id),
            (None, _) => o.replay_dead(webhook.as_deref()),
        }),
        WebhooksCommand::Purge {
            config,
            older_than,
            webhook,
        } => match parse_duration(&older_than) {
            Ok(age) => Outboxes::open(&config).and_then(|o| o.purge(age, webhook.as_deref())),
            Err(e) => Err(Failure::config(format!("--older-than: {e}"))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            for line in f.message.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}

/// A message named on the command line.
struct MessageRef<'c> {
    webhook: &'c WebhookConfig,
    subscriber: &'c SubscriberConfig,
    delivered: bool,
    id: MessageId,
}

impl MessageRef<'_> {
    fn queue(&self) -> Result<QueueName, Failure> {
        let (w, s) = (&self.webhook.name, &self.subscriber.name);
        if self.delivered {
            outbox::delivered_queue(w, s)
        } else {
            outbox::queue(w, s)
        }
        .map_err(Failure::run)
    }
}

/// The state backend `[state]` names, never created: made by whoever runs the command
/// (often root), a redb file would be refused to the gateway running as its own user. No
/// file yet means nothing was ever queued: the commands see an empty outbox.
fn open_existing_state(state: &StateBackend) -> Result<StateStore, Failure> {
    if let StateBackend::Redb { path } = state {
        return Ok(
            match idgate_store::RedbStore::open_existing(path, idgate_store::DEFAULT_WAIT)
                .map_err(Failure::run)?
            {
                Some(store) => StateStore::from(store),
                None => {
                    eprintln!(
                        "note: no state file at {} yet, so nothing is queued (`idgate serve` creates it)",
                        path.display()
                    );
                    StateStore::from(idgate_store::MemoryStore::new())
                }
            },
        );
    }
    idgate_proxy::state::open_state(state).map_err(Failure::run)
}

/// The configured outboxes, in the opened state backend.
struct Outboxes {
    config: Config,
    store: StateStore,
    runtime: tokio::runtime::Runtime,
}

impl Outboxes {
    /// The configuration is validated whole, but of its secrets only those the command
    /// uses are read: the Redis password here (by `open_state`), an outbox key by
    /// `show --body`, a `vault:` one through `[vault]`. Each is read when needed and a
    /// failure names it; the provider and subscriber secrets are never read, so an
    /// operator who is not the gateway's user needs none of them.
    fn open(path: &Path) -> Result<Self, Failure> {
        let config = idgate_config::load_without_secrets(path).map_err(|errors| {
            let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            Failure::config(lines.join("\n"))
        })?;
        if config.webhooks.is_empty() {
            return Err(Failure::config(format!(
                "{}: no [[webhooks]] section",
                path.display()
            )));
        }
        if config.state == StateBackend::Memory {
            return Err(Failure::config(format!(
                "{}: [state] is the in-memory backend, which only the gateway process sees; keep the outbox in redb or Redis",
                path.display()
            )));
        }
        // Outbox keys and the Redis password may be `vault:` references.
        if let Some(v) = &config.vault {
            let client = idgate_secrets::vault::VaultClient::new(v.clone())
                .map_err(|e| Failure::config(format!("vault: {e}")))?;
            idgate_secrets::vault::install(client);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
        let store = {
            let _inside = runtime.enter();
            // The CLI may wait for the store longer than a request would.
            open_existing_state(&config.state)?.patient(Duration::from_secs(10))
        };
        Ok(Self {
            config,
            store,
            runtime,
        })
    }

    fn targets(
        &self,
        webhook: Option<&str>,
    ) -> Result<Vec<(&WebhookConfig, &SubscriberConfig)>, Failure> {
        let chosen: Vec<_> = self
            .config
            .webhooks
            .iter()
            .filter(|w| webhook.is_none_or(|n| n == w.name))
            .flat_map(|w| w.subscribers.iter().map(move |s| (w, s)))
            .collect();
        if chosen.is_empty() {
            let names: Vec<&str> = self
                .config
                .webhooks
                .iter()
                .map(|w| w.name.as_str())
                .collect();
            return Err(Failure::config(format!(
                "no webhook is named \"{}\" (webhooks: {})",
                webhook.unwrap_or_default(),
                names.join(", ")
            )));
        }
        Ok(chosen)
    }

    fn parse_ref(&self, text: &str) -> Result<MessageRef<'_>, Failure> {
        let bad = || {
            Failure::config(format!(
                "\"{text}\" is not a message id: write WEBHOOK/SUBSCRIBER/N or WEBHOOK/SUBSCRIBER/delivered/N, as `idgate webhooks list` shows them"
            ))
        };
        let parts: Vec<&str> = text.split('/').collect();
        let (w, s, delivered, n) = match parts.as_slice() {
            [w, s, n] => (*w, *s, false, *n),
            [w, s, "delivered", n] => (*w, *s, true, *n),
            _ => return Err(bad()),
        };
        let webhook = self
            .config
            .webhooks
            .iter()
            .find(|x| x.name == w)
            .ok_or_else(|| Failure::config(format!("no webhook is named \"{w}\"")))?;
        let subscriber = webhook
            .subscribers
            .iter()
            .find(|x| x.name == s)
            .ok_or_else(|| {
                Failure::config(format!("webhook {w} has no subscriber named \"{s}\""))
            })?;
        Ok(MessageRef {
            webhook,
            subscriber,
            delivered,
            id: MessageId::parse(n).map_err(|_| bad())?,
        })
    }

    /// Every message of `queue`, oldest first, with its clear header when it has one.
    fn all(&self, queue: &QueueName, now: SystemTime) -> Result<Vec<Row>, Failure> {
        let mut rows = Vec::new();
        let mut after: Option<MessageId> = None;
        loop {
            let page = self
                .runtime
                .block_on(self.store.messages(queue, after.as_ref(), 500, now))
                .map_err(Failure::run)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for info in page {
                let header = self
                    .runtime
                    .block_on(self.store.peek(queue, &info.id, now))
                    .map_err(Failure::run)?
                    .and_then(|(_, payload)| read_header(&payload).ok());
                rows.push(Row { info, header });
            }
        }
        Ok(rows)
    }

    fn list(&self, webhook: Option<&str>, with_delivered: bool, json: bool) -> Result<(), Failure> {
        let now = SystemTime::now();
        let mut counts = Vec::new();
        let mut rows = Vec::new();
        for (w, s) in self.targets(webhook)? {
            let queue = outbox::queue(&w.name, &s.name).map_err(Failure::run)?;
            let delivered_queue =
                outbox::delivered_queue(&w.name, &s.name).map_err(Failure::run)?;
            let pending = self.all(&queue, now)?;
            let kept = self.all(&delivered_queue, now)?;
            let dead = pending
                .iter()
                .filter(|r| r.info.state == MessageState::Dead)
                .count();
            counts.push((
                w.name.clone(),
                s.name.clone(),
                pending.len() - dead,
                dead,
                kept.len(),
            ));
            let prefix = format!("{}/{}", w.name, s.name);
            rows.extend(
                pending
                    .into_iter()
                    .map(|r| (format!("{prefix}/{}", r.info.id), false, r)),
            );
            if with_delivered {
                rows.extend(
                    kept.into_iter()
                        .map(|r| (format!("{prefix}/delivered/{}", r.info.id), true, r)),
                );
            }
        }
        if json {
            for (w, s, pending, dead, delivered) in &counts {
                let line = serde_json::json!({"webhook": w, "subscriber": s, "pending": pending, "dead": dead, "delivered": delivered});
                println!("{line}");
            }
            for (id, delivered, r) in &rows {
                println!("{}", r.json(id, *delivered));
            }
            return Ok(());
        }
        table(
            &["WEBHOOK", "SUBSCRIBER", "PENDING", "DEAD", "DELIVERED"],
            counts
                .iter()
                .map(|(w, s, p, d, k)| {
                    vec![
                        w.clone(),
                        s.clone(),
                        p.to_string(),
                        d.to_string(),
                        k.to_string(),
                    ]
                })
                .collect(),
        );
        if !rows.is_empty() {
            println!();
            table(
                &[
                    "ID",
                    "STATE",
                    "ATTEMPTS",
                    "SESSION",
                    "EVENT",
                    "TYPE",
                    "RECEIVED",
                    "LAST ERROR",
                ],
                rows.iter()
                    .map(|(id, delivered, r)| r.cells(id, *delivered))
                    .collect(),
            );
        }
        Ok(())
    }

    fn show(&self, text: &str, body: bool) -> Result<(), Failure> {
        let m = self.parse_ref(text)?;
        let queue = m.queue()?;
        let now = SystemTime::now();
        let Some((info, payload)) = self
            .runtime
            .block_on(self.store.peek(&queue, &m.id, now))
            .map_err(Failure::run)?
        else {
            return Err(Failure::run(format!(
                "no message {text} (delivered and purged, or never there)"
            )));
        };
        let row = Row {
            info,
            header: read_header(&payload).ok(),
        };
        let cells = row.cells(text, m.delivered);
        for (name, value) in [
            "id",
            "state",
            "attempts",
            "session",
            "event",
            "type",
            "received",
            "last error",
        ]
        .iter()
        .zip(cells)
        {
            println!("{name:<11}{value}");
        }
        if let Some(h) = &row.header {
            println!("{:<11}{}", "outbox key", h.key);
        }
        if !body {
            println!(
                "{:<11}not shown: it holds personal data; add --body to decrypt and print it",
                "body"
            );
            return Ok(());
        }
        let keys = OutboxKeys::load(&m.webhook.outbox_keys).map_err(|e| {
            Failure::config(format!("webhooks: {}: outbox key: {e}", m.webhook.name))
        })?;
        let (_, plain) = keys
            .open(
                outbox::queue(&m.webhook.name, &m.subscriber.name)
                    .map_err(Failure::run)?
                    .as_str(),
                &payload,
            )
            .map_err(|e| Failure::run(format!("{text}: {e}")))?;
        println!("{:<11}(below, {} bytes)", "body", plain.len());
        println!("{}", String::from_utf8_lossy(&plain));
        Ok(())
    }

    fn replay(&self, text: &str) -> Result<(), Failure> {
        let m = self.parse_ref(text)?;
        let queue = m.queue()?;
        let now = SystemTime::now();
        if !m.delivered {
            let info = self
                .runtime
                .block_on(self.store.info(&queue, &m.id, now))
                .map_err(Failure::run)?
                .ok_or_else(|| Failure::run(format!("no message {text}")))?;
            if info.state != MessageState::Dead {
                return Err(Failure::run(format!(
                    "{text} is not a dead letter ({}): the gateway is still delivering it",
                    state_text(&info, false)
                )));
            }
            self.runtime
                .block_on(self.store.revive(&queue, &m.id, now))
                .map_err(Failure::run)?;
            eprintln!("{text}: revived; the gateway delivers it again, its attempts started over");
            return Ok(());
        }
        let Some((_, payload)) = self
            .runtime
            .block_on(self.store.peek(&queue, &m.id, now))
            .map_err(Failure::run)?
        else {
            return Err(Failure::run(format!("no message {text} (purged?)")));
        };
        let target = outbox::queue(&m.webhook.name, &m.subscriber.name).map_err(Failure::run)?;
        let copy = NewMessage {
            payload,
            // A deliberate second delivery: it does not wait behind the session's others.
            order_key: None,
            max_attempts: u32::MAX,
            not_before: None,
        };
        let id = self
            .runtime
            .block_on(self.store.push(&target, copy, now))
            .map_err(Failure::run)?;
        eprintln!(
            "{text}: queued again as {}/{}/{id}, with the same idgate-event-id",
            m.webhook.name, m.subscriber.name
        );
        Ok(())
    }

    fn replay_dead(&self, webhook: Option<&str>) -> Result<(), Failure> {
        let now = SystemTime::now();
        let mut total = 0;
        for (w, s) in self.targets(webhook)? {
            let queue = outbox::queue(&w.name, &s.name).map_err(Failure::run)?;
            let dead = self
                .runtime
                .block_on(self.store.dead_letters(&queue, now))
                .map_err(Failure::run)?;
            for d in dead {
                if self
                    .runtime
                    .block_on(self.store.revive(&queue, &d.id, now))
                    .map_err(Failure::run)?
                {
                    total += 1;
                }
            }
        }
        eprintln!("revived {total} dead letter(s); the gateway delivers them again");
        Ok(())
    }

    fn purge(&self, age: Duration, webhook: Option<&str>) -> Result<(), Failure> {
        let now = SystemTime::now();
        let before = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
        let (mut delivered, mut dead) = (0, 0);
        for (w, s) in self.targets(webhook)? {
            let queue = outbox::queue(&w.name, &s.name).map_err(Failure::run)?;
            let kept = outbox::delivered_queue(&w.name, &s.name).map_err(Failure::run)?;
            for row in self.all(&kept, now)? {
                if row.info.enqueued_at <= before && self.delete(&kept, &row.info.id, now)? {
                    delivered += 1;
                }
            }
            let letters = self
                .runtime
                .block_on(self.store.dead_letters(&queue, now))
                .map_err(Failure::run)?;
            for d in letters {
                // Deleted only if still dead: one revived since the list stays.
                if d.enqueued_at <= before
                    && self
                        .runtime
                        .block_on(self.store.delete_dead(&queue, &d.id, now))
                        .map_err(Failure::run)?
                {
                    dead += 1;
                }
            }
        }
        eprintln!(
            "purged {delivered} delivered event(s) and {dead} dead letter(s) older than {}",
            rfc3339(before)
        );
        Ok(())
    }

    fn delete(&self, queue: &QueueName, id: &MessageId, now: SystemTime) -> Result<bool, Failure> {
        self.runtime
            .block_on(self.store.delete_message(queue, id, now))
            .map_err(Failure::run)
    }
}
