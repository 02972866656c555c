//! A gateway's listeners while it runs: started from its configuration, changed
//! by a reload (`SIGHUP`, or `PUT /api/v1/config` with a new version of the
//! `-config` file), drained when it stops.
//!
//! A reload is checked whole before anything changes: the file as at start,
//! every listener's session settings, then the new listeners' sockets. Then a
//! listener the file no longer has drains (its open streams run on for
//! `-drain-timeout`), a new one starts, one whose address or transport changed
//! does both, and the others take their new settings (key, crypt, FEC, KCP,
//! target, limits) for the sessions and streams opened from then on: open
//! sessions keep their key, crypt and settings. Process settings (the admin and
//! public listeners, logging, opening rates) stay as they started.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use utoipa::ToSchema;

use crate::config::{ConfigError, Role, Settings};
use crate::config_file::Loaded;
use crate::runtime::{Plan, Shared, Tuning};

/// The listeners of one process. See the module docs.
pub struct Listeners {
    /// What a configuration file is read over (defaults, variables and flags).
    base: Settings,
    /// The first listener's plan at start: the process's settings, and the
    /// parts every listener shares (session table, counters, opening limits).
    process: Arc<Plan>,
    running: Mutex<Vec<RunningListener>>,
    /// Whether this process runs them ([`Listeners::start`]); only then may a
    /// reload change them.
    started: bool,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Reloads applied and refused, for `/metrics`.
    pub reloads: ReloadCounters,
    /// True once the process drains: every listener does, and a reload is refused.
    stopping: watch::Sender<bool>,
    /// Listener tasks not yet ended, removed ones still draining included.
    tasks: AtomicUsize,
    ended: mpsc::UnboundedSender<std::io::Result<()>>,
    ended_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<std::io::Result<()>>>,
}

struct RunningListener {
    plan: Arc<Plan>,
    drain: watch::Sender<bool>,
}

/// What a reload did, listener by listener.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Reloaded {
    /// Listeners started.
    pub added: Vec<String>,
    /// Listeners draining: they take no new session, and their open streams
    /// run on for `-drain-timeout`.
    pub removed: Vec<String>,
    /// Listeners whose address or transport changed: the old one drains, the
    /// new one started.
    pub replaced: Vec<String>,
    /// Listeners with new settings for sessions and streams opened from now on.
    pub changed: Vec<String>,
    /// Listeners whose settings are as they were.
    pub unchanged: Vec<String>,
    /// What the file says that is not applied, and the file's own warnings.
    pub warnings: Vec<String>,
}

/// Reloads applied and refused since start.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Reloads applied.
    pub applied: AtomicUsize,
    /// Reloads refused.
    pub refused: AtomicUsize,
    /// Whether the last reload was applied (true before any).
    pub last_failed: std::sync::atomic::AtomicBool,
}

impl ReloadCounters {
    fn count<T, E>(&self, result: &Result<T, E>) {
        let counter = if result.is_ok() { &self.applied } else { &self.refused };
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(result.is_err(), Ordering::Relaxed);
    }
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// The file is wrong (its line, key and what is allowed), or a listener
    /// could not start; nothing changed.
    Refused(ConfigError),
    /// Reload does not apply now: a client, or a process that is stopping.
    NotNow(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Refused(e) => write!(f, "{e}; nothing changed"),
            ReloadError::NotNow(why) => f.write_str(why),
        }
    }
}

impl Listeners {
    /// The plans of `loaded`'s listeners, each named, sharing the first one's
    /// session table, counters and limits. Refused when a listener's session
    /// settings do not make an endpoint configuration.
    pub fn plans(loaded: Loaded) -> Result<(Settings, Vec<Arc<Plan>>), ConfigError> {
        let shared = Shared::new(&loaded.listeners[0].settings);
        let several = loaded.listeners.len() > 1;
        let mut plans = Vec::new();
        for listener in loaded.listeners {
            let name = listener.name.clone();
            let plan = Plan::new(listener.name, listener.settings, shared.clone()).map_err(|e| match several {
                true => ConfigError(format!("listener {name}: {e}")),
                false => e,
            })?;
            plans.push(Arc::new(plan));
        }
        Ok((loaded.base, plans))
    }

    /// The listeners of `plans`, not started: what the admin API shows and
    /// changes when something else runs them (tests, tools).
    pub fn idle(plans: Vec<Arc<Plan>>) -> Arc<Listeners> {
        let base = plans.first().expect("at least one listener").settings.clone();
        Self::of(base, plans, false).0
    }

    fn of(base: Settings, plans: Vec<Arc<Plan>>, started: bool) -> (Arc<Listeners>, Vec<watch::Receiver<bool>>) {
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let mut drains = Vec::new();
        let running = plans
            .into_iter()
            .map(|plan| {
                let (drain, rx) = watch::channel(false);
                drains.push(rx);
                RunningListener { plan, drain }
            })
            .collect::<Vec<_>>();
        let listeners = Listeners {
            base,
            process: running[0].plan.clone(),
            running: Mutex::new(running),
            started,
            reloading: Default::default(),
            reloads: ReloadCounters::default(),
            stopping: watch::channel(false).0,
            tasks: AtomicUsize::new(0),
            ended,
            ended_rx: tokio::sync::Mutex::new(ended_rx),
        };
        (Arc::new(listeners), drains)
    }

    /// Binds every listener's sockets, then serves them; fails, serving none,
    /// when one cannot bind. `base` is what the configuration was read over.
    pub async fn start(base: Settings, plans: Vec<Arc<Plan>>) -> std::io::Result<Arc<Listeners>> {
        let (listeners, drains) = Self::of(base, plans, true);
        let plans = listeners.plans_now();
        match listeners.process.settings.role {
            Role::Server => {
                let mut bound = Vec::new();
                for plan in &plans {
                    bound.push(crate::server::bind(plan).await?);
                }
                for ((plan, bound), drain) in plans.into_iter().zip(bound).zip(drains) {
                    listeners.spawn(async move {
                        bound.serve(plan, drain).await;
                        Ok(())
                    });
                }
            }
            Role::Client => {
                for (plan, drain) in plans.into_iter().zip(drains) {
                    listeners.spawn(crate::client::run(plan, drain));
                }
            }
        }
        Ok(listeners)
    }

    fn spawn(&self, task: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static) {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        let ended = self.ended.clone();
        tokio::spawn(async move {
            let _ = ended.send(task.await);
        });
    }

    /// Waits until every listener has ended (after [`Listeners::drain`]); the
    /// first listener that fails ends the wait with its error.
    pub async fn run(&self) -> std::io::Result<()> {
        let mut ended = self.ended_rx.lock().await;
        while self.tasks.load(Ordering::SeqCst) > 0 {
            let Some(result) = ended.recv().await else { break };
            self.tasks.fetch_sub(1, Ordering::SeqCst);
            result?;
        }
        Ok(())
    }

    /// Every listener drains: no new session, and open streams run on for
    /// `-drain-timeout`. A reload is refused from now on.
    pub fn drain(&self) {
        self.stopping.send_replace(true);
        for running in self.running.lock().expect("listeners lock").iter() {
            running.drain.send_replace(true);
        }
    }

    /// Whether the process drains.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// The first listener's plan at start: the process's settings, and the
    /// parts every listener shares.
    pub fn process(&self) -> &Arc<Plan> {
        &self.process
    }

    /// The listeners configured now (removed ones that still drain are not).
    pub fn plans_now(&self) -> Vec<Arc<Plan>> {
        self.running.lock().expect("listeners lock").iter().map(|r| r.plan.clone()).collect()
    }

    /// Reads the `-config` file again and applies it (`SIGHUP`).
    pub async fn reload_file(&self) -> Result<Reloaded, ReloadError> {
        let path = self.base.config.clone();
        if path.is_empty() {
            return Err(ReloadError::NotNow(
                "kcpgate started without -config: there is no file to read again (start it with -config FILE, or \
                 PUT a file's content to /api/v1/config)"
                    .into(),
            ));
        }
        self.reload_with(|base| crate::config_file::read_file(base, &path)).await
    }

    /// Applies `text`, a configuration file's content (`PUT /api/v1/config`);
    /// `origin` names it in messages.
    pub async fn reload_text(&self, origin: &str, text: &str) -> Result<Reloaded, ReloadError> {
        self.reload_with(|base| crate::config_file::read_text(base, origin, text)).await
    }

    async fn reload_with(
        &self,
        read: impl FnOnce(&Settings) -> Result<Loaded, ConfigError>,
    ) -> Result<Reloaded, ReloadError> {
        if self.process.settings.role == Role::Client {
            return Err(ReloadError::NotNow(
                "a client has one listener, set by its flags: restart it to change them".into(),
            ));
        }
        if !self.started {
            return Err(ReloadError::NotNow("these listeners are not run by this process: no reload".into()));
        }
        let _one = self.reloading.lock().await;
        if *self.stopping.borrow() {
            return Err(ReloadError::NotNow("kcpgate is stopping: no reload".into()));
        }
        let result = self.checked_reload(read).await;
        self.reloads.count(&result);
        result
    }

    async fn checked_reload(
        &self,
        read: impl FnOnce(&Settings) -> Result<Loaded, ConfigError>,
    ) -> Result<Reloaded, ReloadError> {
        let loaded = read(&self.base).map_err(ReloadError::Refused)?;
        let mut report = Reloaded { warnings: loaded.warnings.clone(), ..Reloaded::default() };
        report.warnings.extend(process_changes(&self.process.settings, &loaded.listeners[0].settings));

        // Check everything, and bind what is new, before anything changes.
        let running = self.plans_now();
        let mut kept = Vec::new();
        let mut added = Vec::new();
        for listener in loaded.listeners {
            let refused =
                |e: ConfigError| ReloadError::Refused(ConfigError(format!("listener {}: {e}", listener.name)));
            match running.iter().find(|p| p.name == listener.name) {
                Some(plan) if same_place(&plan.settings, &listener.settings) => {
                    let tuning = plan.prepare(listener.settings).map_err(refused)?;
                    let (old, new) = (&plan.tuning().settings, &tuning.settings);
                    if (old.sockbuf, old.dscp) != (new.sockbuf, new.dscp) {
                        report.warnings.push(format!(
                            "listener {}: sockbuf and dscp apply to its sockets as they open: restart kcpgate to \
                             change them",
                            listener.name
                        ));
                    }
                    kept.push((plan.clone(), tuning));
                }
                found => {
                    let shared = self.process.shared.clone();
                    let plan = Plan::new(listener.name.clone(), listener.settings, shared).map_err(refused)?;
                    added.push((Arc::new(plan), found.is_some()));
                }
            }
        }
        let mut bound = Vec::new();
        for (plan, replaced) in added {
            let sockets = crate::server::bind(&plan).await.map_err(|e| {
                ReloadError::Refused(ConfigError(format!(
                    "listener {}: {e} (a listener this reload removes or moves keeps its port until it has drained)",
                    plan.name
                )))
            })?;
            bound.push((plan, replaced, sockets));
        }

        self.apply(kept, bound, &mut report);
        self.process.shared.registry.retune().await;
        tracing::info!(
            added = ?report.added, removed = ?report.removed, replaced = ?report.replaced,
            changed = ?report.changed, "configuration reloaded"
        );
        for w in &report.warnings {
            tracing::warn!("reload: {w}");
        }
        Ok(report)
    }

    /// Applies a checked reload: `kept` listeners take their prepared tuning,
    /// the others drain, and `added` ones (bound; replacing one of the same
    /// name or not) start.
    fn apply(
        &self,
        kept: Vec<(Arc<Plan>, Tuning)>,
        added: Vec<(Arc<Plan>, bool, crate::server::Bound)>,
        report: &mut Reloaded,
    ) {
        let mut running = self.running.lock().expect("listeners lock");
        for (plan, tuning) in kept {
            let changed = plan.tuning().settings != tuning.settings;
            plan.install(tuning);
            match changed {
                true => report.changed.push(plan.name.clone()),
                false => report.unchanged.push(plan.name.clone()),
            }
        }
        let configured: Vec<String> = report.changed.iter().chain(&report.unchanged).cloned().collect();
        running.retain(|r| {
            let stays = configured.contains(&r.plan.name);
            if !stays {
                r.drain.send_replace(true);
                if !added.iter().any(|(p, replaced, _)| *replaced && p.name == r.plan.name) {
                    report.removed.push(r.plan.name.clone());
                }
            }
            stays
        });
        for (plan, replaced, bound) in added {
            match replaced {
                true => report.replaced.push(plan.name.clone()),
                false => report.added.push(plan.name.clone()),
            }
            let (drain, rx) = watch::channel(false);
            running.push(RunningListener { plan: plan.clone(), drain });
            self.spawn(async move {
                bound.serve(plan, rx).await;
                Ok(())
            });
        }
    }

    /// Reloads on every `SIGHUP`, logging what changed or why nothing did.
    pub async fn reload_on_sighup(self: Arc<Self>) {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return tracing::warn!("cannot watch SIGHUP: reload only through PUT /api/v1/config");
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the configuration again");
            if let Err(e) = self.reload_file().await {
                tracing::error!("reload refused: {e}");
            }
        }
    }
}

/// Whether two settings of one listener name listen at the same place, the
/// same way: then the listener keeps its sockets and takes the new settings.
fn same_place(old: &Settings, new: &Settings) -> bool {
    (&old.listen, old.listen_udp, &old.webtransport) == (&new.listen, new.listen_udp, &new.webtransport)
}

/// The process settings `new` (a reloaded file's) gives differently from the
/// running `old`, as warnings: they apply when kcpgate restarts.
fn process_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let differ: [(&str, bool); 20] = [
        ("admin", old.admin != new.admin),
        ("admin-token", old.admin_token != new.admin_token),
        ("admin-cert", (&old.admin_cert, &old.admin_key) != (&new.admin_cert, &new.admin_key)),
        ("metrics-auth", old.metrics_auth != new.metrics_auth),
        ("public", old.public != new.public),
        ("public-cert", (&old.public_cert, &old.public_key) != (&new.public_cert, &new.public_key)),
        (
            "webtransport-cert",
            (&old.webtransport_cert, &old.webtransport_key) != (&new.webtransport_cert, &new.webtransport_key),
        ),
        ("webtransport-origin", old.webtransport_origin != new.webtransport_origin),
        ("webtransport-per-address", old.webtransport_per_address != new.webtransport_per_address),
        ("webtransport-advertise", old.webtransport_advertise != new.webtransport_advertise),
        ("log", old.log != new.log),
        ("log-format", old.log_format != new.log_format),
        ("quiet", old.quiet != new.quiet),
        ("drain-timeout", old.drain_timeout != new.drain_timeout),
        ("open-rate", old.open_rate != new.open_rate),
        ("open-rate-per-source", old.open_rate_per_source != new.open_rate_per_source),
        ("snmplog", old.snmplog != new.snmplog),
        ("snmpperiod", old.snmpperiod != new.snmpperiod),
        ("tcp", old.tcp != new.tcp),
        ("pprof", old.pprof != new.pprof),
    ];
    differ
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| format!("{name} changed: process settings apply when kcpgate restarts"))
        .collect()
}
