//! A QMP client: QEMU's machine protocol over its unix socket. Newline-
//! delimited JSON; the greeting, then `qmp_capabilities`, then commands
//! whose replies are matched by `id`, with asynchronous events queued apart
//! so that a wait for one (`BLOCK_JOB_READY`, ...) never loses it. Every
//! wait has a timeout. Small and our own: the published crates lag the
//! schema of the QEMU versions that run in practice (7.2 to 10.x).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};

use crate::lock;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: no {0} within {1:?}")]
    Timeout(String, Duration),
    /// QEMU refused a command.
    #[error("QMP {command}: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP: the connection closed")]
    Closed,
    #[error("QMP: {0}")]
    Protocol(String),
}

/// One asynchronous event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

type Reply = Result<Value, (String, String)>;

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    events: Mutex<VecDeque<Event>>,
    arrived: Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// A connected QMP session (capabilities negotiated).
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// The QEMU version the greeting announced (major, minor, micro).
    pub version: (u64, u64, u64),
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How long a command may take to answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Qmp {
    /// Connects to `socket` (retrying while QEMU creates it, up to `timeout`),
    /// reads the greeting and negotiates capabilities.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => break stream,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout("greeting".into(), timeout))??
            .ok_or(QmpError::Closed)?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|e| QmpError::Protocol(format!("greeting: {e}")))?;
        let v = &greeting["QMP"]["version"]["qemu"];
        let number = |k: &str| v[k].as_u64().unwrap_or(0);
        let version = (number("major"), number("minor"), number("micro"));
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_replies(lines, shared.clone()));
        let qmp = Qmp { writer: tokio::sync::Mutex::new(write), shared, next_id: AtomicU64::new(1), version, reader };
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_within(command, arguments, COMMAND_TIMEOUT).await
    }

    pub async fn execute_within(&self, command: &str, arguments: Value, timeout: Duration) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, tx);
        if self.shared.closed.load(Ordering::Acquire) {
            lock(&self.shared.pending).remove(&id);
            return Err(QmpError::Closed);
        }
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments, "id": id}))
            .map_err(|e| QmpError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let written = async {
            let mut writer = self.writer.lock().await;
            writer.write_all(&line).await
        };
        if let Err(e) = written.await {
            lock(&self.shared.pending).remove(&id);
            return Err(e.into());
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                lock(&self.shared.pending).remove(&id);
                Err(QmpError::Timeout(format!("answer to {command}"), timeout))
            }
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command { command: command.to_owned(), class, desc }),
        }
    }

    /// Waits for the first queued or coming event `name` whose data `matches`
    /// (events before it stay queued for other waits).
    pub async fn wait_event(
        &self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Event, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            {
                let mut events = lock(&self.shared.events);
                if let Some(at) = events.iter().position(|e| e.name == name && matches(&e.data)) {
                    return Ok(events.remove(at).unwrap_or_else(|| unreachable!("position found")));
                }
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(QmpError::Closed);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(QmpError::Timeout(format!("event {name}"), timeout));
            }
        }
    }

    /// The migration capabilities this QEMU knows.
    pub async fn migrate_capabilities(&self) -> Result<HashSet<String>, QmpError> {
        let listed = self.execute("query-migrate-capabilities", json!({})).await?;
        Ok(listed
            .as_array()
            .map(|caps| caps.iter().filter_map(|c| c["capability"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub async fn status(&self) -> Result<String, QmpError> {
        let status = self.execute("query-status", json!({})).await?;
        status["status"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status: {status}")))
    }

    /// Whether QEMU closed the connection (it quit or died).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

async fn read_replies(mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>, shared: Arc<Shared>) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(line, "QMP sent something that is not JSON");
            continue;
        };
        if let Some(name) = message["event"].as_str() {
            lock(&shared.events).push_back(Event { name: name.to_owned(), data: message["data"].clone() });
            shared.arrived.notify_waiters();
            continue;
        }
        let Some(id) = message["id"].as_u64() else { continue };
        let Some(reply) = lock(&shared.pending).remove(&id) else { continue };
        let answer = match message.get("error") {
            Some(error) => Err((
                error["class"].as_str().unwrap_or("GenericError").to_owned(),
                error["desc"].as_str().unwrap_or_default().to_owned(),
            )),
            None => Ok(message["return"].clone()),
        };
        let _ = reply.send(answer);
    }
    shared.closed.store(true, Ordering::Release);
    lock(&shared.pending).clear();
    shared.arrived.notify_waiters();
}
