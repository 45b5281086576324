//! Background compute for the explorer: two named threads, typed [`Command`]s in and
//! [`Event`]s out, a repaint waker injected by the app. Never imports egui.
//!
//! * `latent-analysis` runs the slow pair workflow (dataset, codes, gains, support set, fit,
//!   metrics, the all-pairs matrix). A newer `Sync` replaces older pending ones, and the
//!   running one can be cancelled through [`Worker::cancel`].
//! * `latent-decode` decodes slider codes with both models. It keeps only the newest pending
//!   request (coalescing), so a fast slider drag never queues stale work.
//! * `latent-geometry` computes local bases (cached per model and code), their transfer through
//!   the map, traversals along local directions and the ground-truth probes; the newest pending
//!   command of each kind runs, cancelled through [`Worker::cancel_geometry`].
//!
//! Both share the loaded pair through [`ActivePair`]; every error becomes [`Event::Failed`].

mod analysis;
mod decode;
pub use decode::decode_slider;
mod geometry;
pub use geometry::MAX_TRAVERSAL_STEPS;
mod probes;
mod progress;
pub mod protocol;

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;

use crate::data::Dataset;
use crate::latent::pipeline::Loaded;
use crate::latent::LinearMap;
use crate::progress::Cancel;
pub use protocol::{
    Command, Event, FitSpec, LocalBasisResult, ModelSummary, PairSpec, ProbeResult, ProbeScores,
    ProbeTask, RequestId, SectorData, SupportChoice, TransferResult, TraversalResult,
};

/// Wakes the UI after an event was sent (the app injects `ctx.request_repaint()`).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Where the worker keeps caches and which device it computes on.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Folder of the encodings and gains caches.
    pub cache_dir: PathBuf,
    /// Device spec: `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

/// The pair the decode thread currently decodes with.
pub(crate) struct ActivePair {
    pub(crate) dataset: Arc<Dataset>,
    pub(crate) source: Arc<Loaded>,
    pub(crate) target: Arc<Loaded>,
    pub(crate) map: Option<Arc<LinearMap>>,
}

/// State shared by the worker threads.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) pair: Mutex<Option<Arc<ActivePair>>>,
    pub(crate) cancel: Mutex<Cancel>,
    pub(crate) geometry_cancel: Mutex<Cancel>,
}

/// Sends events and wakes the UI.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: Sender<Event>,
    waker: Waker,
}

impl Outbox {
    /// Sends `event` (ignored once the app is gone) and wakes the UI.
    pub(crate) fn send(&self, event: Event) {
        if self.tx.send(event).is_ok() {
            (self.waker)();
        }
    }
}

/// Handle to the worker threads; dropping it stops them.
pub struct Worker {
    analysis_tx: Option<Sender<Command>>,
    decode_tx: Option<Sender<Command>>,
    geometry_tx: Option<Sender<Command>>,
    events: Receiver<Event>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    next_req: RequestId,
}

impl Worker {
    /// Starts the threads. `waker` is called after every event.
    pub fn spawn(config: WorkerConfig, waker: Waker) -> anyhow::Result<Worker> {
        let (event_tx, events) = mpsc::channel();
        let out = Outbox {
            tx: event_tx,
            waker,
        };
        let shared = Arc::new(Shared::default());
        let (analysis_tx, analysis_rx) = mpsc::channel();
        let (decode_tx, decode_rx) = mpsc::channel();
        let analysis = {
            let (out, shared, config) = (out.clone(), shared.clone(), config.clone());
            std::thread::Builder::new()
                .name("latent-analysis".into())
                .spawn(move || analysis::run(&config, analysis_rx, &out, &shared))
                .context("cannot start the analysis thread")?
        };
        let (geometry_tx, geometry_rx) = mpsc::channel();
        let geometry = {
            let (out, shared) = (out.clone(), shared.clone());
            std::thread::Builder::new()
                .name("latent-geometry".into())
                .spawn(move || geometry::run(geometry_rx, &out, &shared))
                .context("cannot start the geometry thread")?
        };
        let decode = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("latent-decode".into())
                .spawn(move || decode::run(decode_rx, &out, &shared))
                .context("cannot start the decode thread")?
        };
        Ok(Worker {
            analysis_tx: Some(analysis_tx),
            decode_tx: Some(decode_tx),
            geometry_tx: Some(geometry_tx),
            events,
            shared,
            threads: vec![analysis, geometry, decode],
            next_req: 1,
        })
    }

    /// A fresh request id.
    pub fn next_req(&mut self) -> RequestId {
        self.next_req += 1;
        self.next_req
    }

    /// Sends a command to the thread that handles it. Errors when that thread has stopped.
    pub fn send(&self, command: Command) -> anyhow::Result<()> {
        let tx = match command {
            Command::Decode { .. } => &self.decode_tx,
            Command::Sync { .. } | Command::Pairs { .. } => &self.analysis_tx,
            Command::LocalBasis { .. }
            | Command::Traverse { .. }
            | Command::Probes { .. }
            | Command::Montage { .. } => &self.geometry_tx,
        };
        tx.as_ref()
            .context("the worker is shut down")?
            .send(command)
            .map_err(|_| anyhow::anyhow!("the worker thread has stopped"))
    }

    /// Asks the running analysis job to stop at its next step.
    pub fn cancel(&self) {
        if let Ok(c) = self.shared.cancel.lock() {
            c.cancel();
        }
    }

    /// Asks the running geometry job (local basis, traversal, probes) to stop at its next step.
    pub fn cancel_geometry(&self) {
        if let Ok(c) = self.shared.geometry_cancel.lock() {
            c.cancel();
        }
    }

    /// All events that arrived since the last call.
    pub fn drain(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }
}

/// How long dropping the worker waits for busy threads.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(750);

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
        self.cancel_geometry();
        self.analysis_tx = None;
        self.decode_tx = None;
        self.geometry_tx = None;
        // Jobs stop at their next cancellation check. A step without one (generating a
        // synthetic dataset, one long decode) must not hold the window open: after
        // SHUTDOWN_GRACE such threads are left to the process exit. Every file they write is
        // a temporary file renamed into place when complete, so nothing half-written remains.
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        for t in self.threads.drain(..) {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if !t.is_finished() {
                log::info!(
                    "thread {} is still busy at exit; leaving it to the process exit",
                    t.thread().name().unwrap_or("?")
                );
                continue;
            }
            if t.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
    }
}
