//! The management library (NVML), read for `status` and `doctor` in a thread of its own: on a
//! wedged GPU NVML can hang (as `nvidia-smi` then does), and the command must still answer. Each
//! question waits at most [`PATIENCE`]; a library that did not answer in time is not asked again
//! (the thread is left behind, and goes with the process).
//!
//! The library is opened at the first question, not before: `status` without a card to ask
//! about never loads it. Loading it creates no CUDA context.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use vramguard_core::nvml::Nvml;

/// How long one question to the library may take (opening it included).
pub const PATIENCE: Duration = Duration::from_secs(5);

/// What the thread answers.
enum Answer {
    /// The library was opened, with the number of cards it sees, or could not be.
    Opened(Result<u32, String>),
    /// Each asked card's used bytes, `None` for a card the library does not know or cannot tell.
    Used(Vec<Option<u64>>),
}

/// Where the reader stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlState {
    /// Not asked anything yet.
    Unopened,
    /// Open; it sees this many cards.
    Open(u32),
    /// It could not be opened (the loader's or NVML's message), or stopped answering.
    Failed(String),
}

/// The cards a question is about, by UUID.
type Question = Vec<[u8; 16]>;

/// The way to the thread: questions out, answers back.
struct Channel {
    ask: Sender<Question>,
    answers: Receiver<Answer>,
}

/// The management library in its thread.
pub struct NvmlReader {
    library: PathBuf,
    state: NvmlState,
    channel: Option<Channel>,
}

impl NvmlReader {
    /// A reader of the library at `library` (`VRAMGUARD_NVML`); nothing is loaded yet.
    pub fn new(library: &Path) -> NvmlReader {
        NvmlReader {
            library: library.to_path_buf(),
            state: NvmlState::Unopened,
            channel: None,
        }
    }

    /// The library's name or path, as configured.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Where the reader stands.
    pub fn state(&self) -> &NvmlState {
        &self.state
    }

    /// Opens the library (in its thread) unless that was tried already; returns the state.
    pub fn open(&mut self) -> &NvmlState {
        if self.state == NvmlState::Unopened {
            self.state = match self.start() {
                Ok(count) => NvmlState::Open(count),
                Err(message) => NvmlState::Failed(message),
            };
        }
        &self.state
    }

    fn start(&mut self) -> Result<u32, String> {
        let (ask, questions) = mpsc::channel::<Question>();
        let (reply, answers) = mpsc::channel();
        let library = self.library.clone();
        std::thread::Builder::new()
            .name("vramguard-nvml".into())
            .spawn(move || serve(&library, &questions, &reply))
            .map_err(|e| format!("cannot start a thread for it: {e}"))?;
        let opened = match answers.recv_timeout(PATIENCE) {
            Ok(Answer::Opened(result)) => result,
            Ok(Answer::Used(_)) => Err("it answered out of turn".to_string()),
            Err(RecvTimeoutError::Timeout) => Err(unresponsive()),
            Err(RecvTimeoutError::Disconnected) => Err("its thread ended".to_string()),
        };
        if opened.is_ok() {
            self.channel = Some(Channel { ask, answers });
        }
        opened
    }

    /// The used bytes of each card in `uuids` (`None` for a card NVML does not know or cannot
    /// tell), or `None` when the library cannot be used. Opens it first if needed.
    pub fn used(&mut self, uuids: &[[u8; 16]]) -> Option<Vec<Option<u64>>> {
        if !matches!(self.open(), NvmlState::Open(_)) {
            return None;
        }
        let Channel { ask, answers } = self.channel.as_ref()?;
        if ask.send(uuids.to_vec()).is_err() {
            self.fail("its thread ended".to_string());
            return None;
        }
        match answers.recv_timeout(PATIENCE) {
            Ok(Answer::Used(used)) if used.len() == uuids.len() => Some(used),
            Ok(_) => {
                self.fail("it answered out of turn".to_string());
                None
            }
            Err(RecvTimeoutError::Timeout) => {
                self.fail(unresponsive());
                None
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.fail("its thread ended".to_string());
                None
            }
        }
    }

    /// Stops using the library: it is not asked again.
    fn fail(&mut self, message: String) {
        self.channel = None;
        self.state = NvmlState::Failed(message);
    }
}

fn unresponsive() -> String {
    format!(
        "it did not answer within {} s (a wedged GPU?)",
        PATIENCE.as_secs()
    )
}

/// The thread: opens the library, then answers every question until the reader goes away.
fn serve(library: &Path, questions: &Receiver<Question>, reply: &Sender<Answer>) {
    let nvml = match Nvml::open(library) {
        Ok(nvml) => nvml,
        Err(e) => {
            let _ = reply.send(Answer::Opened(Err(e.to_string())));
            return;
        }
    };
    let count = nvml.device_count().map_err(|e| e.to_string());
    let opened = count.is_ok();
    if reply.send(Answer::Opened(count)).is_err() || !opened {
        return;
    }
    while let Ok(uuids) = questions.recv() {
        let used = uuids
            .iter()
            .map(|uuid| {
                let device = nvml.device_by_uuid(uuid).ok()?;
                nvml.memory(device).ok().map(|memory| memory.used)
            })
            .collect();
        if reply.send(Answer::Used(used)).is_err() {
            return;
        }
    }
}
