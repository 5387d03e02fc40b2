//! The ledger as a record that can always be rebuilt from its members.
//!
//! Every member keeps what it holds in its own memory (`own`). A member's periodic check
//! ([`Ledger::check`], run by the guard's watcher thread a few times a second, and by an
//! operation that failed in a way only damage explains) looks for:
//!
//! - a file that is no longer the one at the path (removed, or replaced by another file);
//! - a damaged header (magic number, layout, sizes);
//! - its own slot or its devices' records overwritten (a random body under an intact header);
//! - a device lock that stays taken past its deadline (a forged word, or a member stopped
//!   inside it);
//! - totals that disagree with the slots (a forged `charged`), recomputed in place;
//! - its own counters in the file that disagree with its own copy, put right in place.
//!
//! On the first four it moves: it replaces a damaged file at the path with a fresh ledger
//! (published with `rename()`, under the damaged file's rebuild lock, and only if that file is
//! still the one at the path), creates one where none is (published with `link()`, which only
//! one creator wins), or follows the file that is at the path; then it maps that file in place of
//! the old one and re-registers its devices, its memberships and what each holds and has in
//! flight. Whoever comes next finds the new file and follows it, so concurrent rebuilders and
//! newcomers end in one ledger. The protocol is `docs/ledger.md`, "Rebuilding".

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::layout::{self, DEVICE_READY, SLOT_ACTIVE, SLOT_FREE};
use super::{
    DeviceId, LOCK_DEADLINE, Ledger, LedgerError, MAX_DEVICES, SlotId, admission, file, lock,
};

/// How long the periodic check waits for a device lock before it looks again next time.
const CHECK_PATIENCE: Duration = Duration::from_millis(20);

/// One thing a check found wrong, in words, and what was done about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What was wrong.
    pub found: String,
    /// What was done: the repair, or why it could not be made.
    pub done: String,
    /// Whether it was put right.
    pub repaired: bool,
}

/// What one check found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkup {
    /// Everything found wrong (empty: the ledger is sound).
    pub findings: Vec<Finding>,
    /// The handle moved to another file (rebuilt, created anew or followed).
    pub moved: bool,
}

impl Checkup {
    /// Whether the handle moved to another file.
    pub fn moved(&self) -> bool {
        self.moved
    }
}

/// What the periodic check remembers between two looks: each device lock's word and since
/// when it was seen holding that very word.
#[derive(Default)]
pub(super) struct WatchState {
    locks: Vec<(u64, Option<Instant>)>,
}

/// Why a handle must leave its file.
struct Damage(String);

impl Ledger {
    /// The periodic check of a member (see the module documentation). Never blocks for long:
    /// a device lock it cannot take at once is looked at again next time. A read-only handle,
    /// one with no membership, and one whose file was truncated check nothing.
    pub fn check(&self) -> Checkup {
        if self.read_only || self.detached.load(Ordering::Relaxed) || self.own.members().is_empty()
        {
            return Checkup::default();
        }
        if let Some(damage) = self.damage().or_else(|| self.stuck_lock()) {
            return self.move_because(damage);
        }
        let mut checkup = Checkup::default();
        self.put_own_counters_right(&mut checkup);
        self.recompute_disagreeing_totals(&mut checkup);
        checkup
    }

    /// After an operation failed in a way damage may explain: checks, and moves if the file is
    /// damaged (a device lock still taken by the same owner counts as damage here: the
    /// operation waited its whole deadline for it).
    pub(super) fn heal(&self) -> Checkup {
        if self.read_only || self.detached.load(Ordering::Relaxed) {
            return Checkup::default();
        }
        match self.damage().or_else(|| self.lock_held_still()) {
            Some(damage) => self.move_because(damage),
            None => Checkup::default(),
        }
    }

    /// Whether the file is not the one at the path, or its header, this handle's slots or its
    /// devices' records were overwritten.
    fn damage(&self) -> Option<Damage> {
        match file::identity_at(&self.path) {
            None => return Some(Damage("the ledger file was removed".into())),
            Some(identity) if identity != self.identity() => {
                return Some(Damage(
                    "another file was put in the ledger file's place".into(),
                ));
            }
            Some(_) => {}
        }
        let magic = self.layout().header.magic.load(Ordering::Acquire);
        if magic == layout::TRUNCATED_MAGIC {
            return None; // the truncation path: this handle detaches (see `Ledger::check_file`)
        }
        if let Err(error) = file::check_header(&self.mapping, &self.path) {
            return Some(Damage(format!("its header was overwritten ({error})")));
        }
        for (_, slot, _) in self.own.members() {
            let record = self.slot(slot.index as usize);
            if record.state.load(Ordering::Acquire) != SLOT_ACTIVE
                || record.generation.load(Ordering::Acquire) as u32 != slot.generation
            {
                return Some(Damage(format!(
                    "this process's slot {} was overwritten",
                    slot.index
                )));
            }
        }
        for (id, info) in self.own.devices() {
            let record = self.device(self.own.device(id));
            if record.state.load(Ordering::Acquire) != DEVICE_READY
                || layout::load_uuid(&record.uuid) != info.uuid
            {
                return Some(Damage(format!(
                    "the record of {} was overwritten",
                    info.name
                )));
            }
        }
        None
    }

    /// A device lock of this handle's devices that the check saw taken by one owner for longer
    /// than the lock deadline.
    fn stuck_lock(&self) -> Option<Damage> {
        let mut watch = self.watch.lock().ok()?;
        if watch.locks.len() < MAX_DEVICES {
            watch.locks.resize(MAX_DEVICES, (0, None));
        }
        let now = Instant::now();
        let mut stuck = None;
        for (id, info) in self.own.devices() {
            let record = self.own.device(id).index as usize;
            let word = self
                .device(DeviceId {
                    index: record as u32,
                })
                .lock
                .load(Ordering::Acquire);
            let seen = &mut watch.locks[record.min(MAX_DEVICES - 1)];
            match *seen {
                (token, Some(since)) if token == word && word != 0 => {
                    if now.saturating_duration_since(since) >= LOCK_DEADLINE {
                        stuck = Some(Damage(format!(
                            "the lock of {} stayed taken by one owner for {} s (its owner stopped \
                             inside it, or the word was forged)",
                            info.name,
                            now.saturating_duration_since(since).as_secs()
                        )));
                        *seen = (0, None);
                    }
                }
                _ => *seen = (word, (word != 0).then_some(now)),
            }
        }
        stuck
    }

    /// After an operation waited out the lock deadline: a lock of this handle's devices still
    /// taken by the same owner a moment later.
    fn lock_held_still(&self) -> Option<Damage> {
        let words = |ledger: &Ledger| -> Vec<(String, u64)> {
            ledger
                .own
                .devices()
                .into_iter()
                .map(|(id, info)| {
                    let word = ledger
                        .device(ledger.own.device(id))
                        .lock
                        .load(Ordering::Acquire);
                    (info.name, word)
                })
                .collect()
        };
        let before = words(self);
        std::thread::sleep(Duration::from_millis(10));
        let after = words(self);
        before
            .iter()
            .zip(&after)
            .find(|((_, a), (_, b))| *a != 0 && a == b)
            .map(|((name, _), _)| {
                Damage(format!(
                    "the lock of {name} stayed taken past its deadline of {} s (its owner \
                     stopped inside it, or the word was forged)",
                    LOCK_DEADLINE.as_secs()
                ))
            })
    }

    /// Moves this handle to a sound ledger because of `damage`: one thread at a time, while no
    /// operation of this handle is under way.
    fn move_because(&self, damage: Damage) -> Checkup {
        let before = self.own.moves();
        let Some(moving) = self.own.begin_move() else {
            // Another thread moved (or could not start because operations did not end).
            return Checkup {
                findings: Vec::new(),
                moved: self.own.moves() != before,
            };
        };
        let result = self.move_to_sound_ledger();
        drop(moving);
        let (done, repaired) = match result {
            Ok(how) => (how, true),
            Err(error) => (format!("not repaired: {error}"), false),
        };
        Checkup {
            findings: vec![Finding {
                found: damage.0,
                done,
                repaired,
            }],
            moved: repaired,
        }
    }

    /// Finds or makes a sound ledger at the path, maps it in place of this handle's file, and
    /// registers everything this handle's members hold in it. Returns what was done, in words.
    fn move_to_sound_ledger(&self) -> Result<String, LedgerError> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("/"));
        for _ in 0..8 {
            // Creates the file if none is there, replaces one whose header is damaged.
            let opened = file::open(dir, true)?;
            if opened.identity != self.identity() {
                let fresh = layout_is_empty(opened.mapping.layout());
                self.adopt(opened)?;
                return Ok(if fresh {
                    "rebuilt a fresh ledger and registered what this process holds in it".into()
                } else {
                    "joined the ledger now at the path and registered what this process holds \
                     in it"
                        .into()
                });
            }
            // The path still holds this handle's file, whose content is damaged.
            let directory = super::directory::Directory::open(dir, false)?;
            file::replace_damaged(&directory, &self.path, &opened.file)?;
        }
        Err(LedgerError::Io {
            path: self.path.clone(),
            op: "rebuild",
            source: std::io::Error::other("the ledger file kept changing while it was rebuilt"),
        })
    }

    /// Maps `opened` in place of this handle's file and registers this handle's devices,
    /// memberships and counters in it.
    fn adopt(&self, opened: file::OpenLedger) -> Result<(), LedgerError> {
        self.clear_own_slots();
        file::take_over_descriptor(&self.file, &opened.file, &self.path)?;
        self.mapping.remap(self.file.as_fd(), true, &self.path)?;
        self.identity[0].store(opened.identity.0, Ordering::Release);
        self.identity[1].store(opened.identity.1, Ordering::Release);
        drop(opened);
        if let Ok(mut watch) = self.watch.lock() {
            watch.locks.clear();
        }
        // Updates that missed the old file's locks are in the members' own counters, which are
        // written into the new file below: applying them there too would count them twice.
        self.pending.clear();
        // The liveness locks held the old file's slots: its members see this one as gone.
        for fd in self.member_files.iter() {
            super::membership::close_member_file(fd);
        }
        // Everything that can be registered is, even when one step fails (the first failure is
        // what the caller says): a member re-registered in part is better than not at all.
        let mut first_failure = None;
        let mut failed = |error: LedgerError| {
            first_failure.get_or_insert(error);
        };
        let devices = self.own.devices();
        for (id, info) in &devices {
            match self.register_here(info.uuid, &info.name, info.capacity, info.budget) {
                Ok(record) => self.own.move_device(*id, record.index as usize),
                Err(error) => failed(error),
            }
        }
        for (member, _, command) in self.own.members() {
            let slot = match self.join_here(&command) {
                Ok(slot) => slot,
                Err(error) => {
                    failed(error);
                    continue;
                }
            };
            self.own
                .move_member(member, slot.index as usize, slot.generation);
            for (id, _) in &devices {
                if let Some(counters) = self.own.counters(member, *id)
                    && let Err(error) =
                        self.restore_share(slot, self.own.device(*id), counters.read())
                {
                    failed(error);
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Before this handle leaves its file: its slots there are emptied and freed, so that the
    /// old file shows none of what its members hold (a forked child that shares a slot's
    /// liveness lock would otherwise keep it looking alive, with bytes the rebuilt ledger holds
    /// too). Under each device lock when it can be had at once, else by plain stores (the totals
    /// of a damaged file are recomputed by whoever still checks it).
    fn clear_own_slots(&self) {
        if self.intact().is_err() {
            return;
        }
        for (_, slot, _) in self.own.members() {
            let index = slot.index as usize;
            let record = self.slot(index);
            if record.generation.load(Ordering::Acquire) as u32 != slot.generation {
                continue; // not ours any more (overwritten): nothing of ours to clear
            }
            let token = lock::token(slot.index, slot.generation.into());
            for device in 0..self.device_count() {
                let share = &record.devices[device];
                if !admission::has_stake(share) {
                    continue;
                }
                let device_record = &self.layout().devices[device];
                match lock::acquire(&device_record.lock, token, CHECK_PATIENCE, |owner| {
                    self.probe_lock_owner(owner)
                }) {
                    Ok(guard) => {
                        admission::remove_share(device_record, share);
                        if guard.taken_from_dead {
                            admission::recompute_totals(self.layout(), device);
                        }
                        drop(guard);
                        admission::wake_waiters(device_record);
                    }
                    Err(_) => {
                        for counter in [
                            &share.held,
                            &share.in_flight,
                            &share.claim,
                            &share.wait_ticket,
                            &share.wait_bytes,
                        ] {
                            counter.store(0, Ordering::Relaxed);
                        }
                    }
                }
            }
            record.generation.fetch_add(1, Ordering::AcqRel);
            record.state.store(SLOT_FREE, Ordering::Release);
        }
    }

    /// Under `dev`'s lock: records a re-registered member's counters (held, in flight, claim)
    /// in its fresh slot and recomputes the device's totals from the slots.
    fn restore_share(
        &self,
        slot: SlotId,
        dev: DeviceId,
        (held, in_flight, claim): (u64, u64, u64),
    ) -> Result<(), LedgerError> {
        if held == 0 && in_flight == 0 && claim == 0 {
            return Ok(());
        }
        let token = lock::token(slot.index, slot.generation.into());
        let guard = self.lock_device(dev, token)?;
        let share = &self.slot(slot.index as usize).devices[dev.index as usize % MAX_DEVICES];
        share.held.store(held, Ordering::Relaxed);
        share.in_flight.store(in_flight, Ordering::Relaxed);
        share.claim.store(claim, Ordering::Relaxed);
        admission::recompute_totals(self.layout(), dev.index as usize);
        drop(guard);
        admission::wake_waiters(self.device(dev));
        Ok(())
    }

    /// Puts this handle's counters in the file right where they disagree with its own copy,
    /// looked at while no operation of the handle is under way.
    fn put_own_counters_right(&self, checkup: &mut Checkup) {
        for (member, slot, _) in self.own.members() {
            for (id, info) in self.own.devices() {
                let dev = self.own.device(id);
                let Some(own) = self.own.counters(member, id) else {
                    continue;
                };
                let share =
                    &self.slot(slot.index as usize).devices[dev.index as usize % MAX_DEVICES];
                let in_file = || {
                    (
                        share.held.load(Ordering::Acquire),
                        share.in_flight.load(Ordering::Acquire),
                        share.claim.load(Ordering::Acquire),
                    )
                };
                let Some(quiet) = self.own.quiet() else {
                    return;
                };
                let (mine, theirs) = (own.read(), in_file());
                if mine == theirs || self.own.quiet() != Some(quiet) {
                    continue;
                }
                let token = lock::token(slot.index, slot.generation.into());
                let record = self.device(dev);
                let Ok(guard) = lock::acquire(&record.lock, token, CHECK_PATIENCE, |owner| {
                    self.probe_lock_owner(owner)
                }) else {
                    continue;
                };
                // Updates of this process that missed the lock earlier are in its own copy
                // already: applied now, they bring the file to agree with it.
                if self.pending.any() {
                    self.apply_pending(dev);
                }
                // Still standing still, and still different: this process's word is the truth.
                if self.own.quiet() == Some(quiet) && own.read() == mine && in_file() != mine {
                    share.held.store(mine.0, Ordering::Relaxed);
                    share.in_flight.store(mine.1, Ordering::Relaxed);
                    share.claim.store(mine.2, Ordering::Relaxed);
                    admission::recompute_totals(self.layout(), dev.index as usize);
                    record.repairs.fetch_add(1, Ordering::Relaxed);
                    checkup.findings.push(Finding {
                        found: format!(
                            "this process's counters on {} were {} held, {} in flight, {} \
                             claimed in the file, but it holds {}, {}, {}",
                            info.name, theirs.0, theirs.1, theirs.2, mine.0, mine.1, mine.2
                        ),
                        done: "wrote what it holds into its slot and recomputed the totals".into(),
                        repaired: true,
                    });
                }
                drop(guard);
                admission::wake_waiters(record);
            }
        }
    }

    /// Recomputes the totals of this handle's devices where they disagree with the slots.
    fn recompute_disagreeing_totals(&self, checkup: &mut Checkup) {
        let Some((_, slot, _)) = self.own.members().into_iter().next() else {
            return;
        };
        let token = lock::token(slot.index, slot.generation.into());
        for (id, info) in self.own.devices() {
            let dev = self.own.device(id);
            let record = self.device(dev);
            let Ok(guard) = lock::acquire(&record.lock, token, CHECK_PATIENCE, |owner| {
                self.probe_lock_owner(owner)
            }) else {
                continue;
            };
            if let Some(disagreement) = totals_disagreement(self.layout(), dev.index as usize) {
                admission::recompute_totals(self.layout(), dev.index as usize);
                record.repairs.fetch_add(1, Ordering::Relaxed);
                checkup.findings.push(Finding {
                    found: format!(
                        "the totals of {} disagreed with its slots: {disagreement}",
                        info.name
                    ),
                    done: "recomputed them from the slots".into(),
                    repaired: true,
                });
            }
            drop(guard);
            admission::wake_waiters(record);
        }
    }

    /// Under the registration lock, for a device already registered: takes the caller's
    /// capacity and budget when no live member other than this handle's has anything in the
    /// ledger (the settings of members long gone do not outlive them).
    pub(super) fn adopt_settings_if_unowned(&self, dev: DeviceId, capacity: u64, budget: u64) {
        let record = self.device(dev);
        if record.budget.load(Ordering::Relaxed) == budget
            && record.capacity.load(Ordering::Relaxed) == capacity
        {
            return;
        }
        let ours: Vec<usize> = self
            .own
            .members()
            .iter()
            .map(|(_, slot, _)| slot.index as usize)
            .collect();
        let someone_else = (0..self.slot_count()).any(|index| {
            !ours.contains(&index)
                && self.slot(index).state.load(Ordering::Acquire) != SLOT_FREE
                && self.slot_is_alive(index)
        });
        if someone_else {
            return;
        }
        // A handle that has not joined changes nothing (it has no token to take the lock with).
        let Some(&index) = ours.first() else { return };
        let generation = self.slot(index).generation.load(Ordering::Acquire);
        let token = lock::token(index as u32, generation);
        if let Ok(guard) = self.lock_device(dev, token) {
            record.capacity.store(capacity, Ordering::Relaxed);
            record.budget.store(budget, Ordering::Relaxed);
            drop(guard);
            admission::wake_waiters(record);
        }
    }

    /// For `vramguard status` and `doctor`: recomputes every device's totals that disagree with
    /// its slots, as a member briefly (the device lock needs a member's token), and says what it
    /// found and did. A handle that cannot write (or cannot join) changes nothing and reports
    /// what [`Ledger::examine`] finds, as not repaired.
    pub fn repair_totals(&self) -> Vec<Finding> {
        let unrepaired = |why: &str| {
            self.examine()
                .into_iter()
                .map(|found| Finding {
                    found,
                    done: format!("not repaired: {why}"),
                    repaired: false,
                })
                .collect()
        };
        if self.read_only {
            return unrepaired("this user cannot write the ledger");
        }
        if self.examine().is_empty() {
            return Vec::new();
        }
        let Ok(me) = self.join_here("vramguard repair") else {
            return unrepaired("no slot could be taken to repair it");
        };
        let token = lock::token(me.index, me.generation.into());
        let layout = self.layout();
        let mut findings = Vec::new();
        for index in 0..self.device_count() {
            let record = &layout.devices[index];
            if record.state.load(Ordering::Acquire) != DEVICE_READY {
                continue;
            }
            let dev = DeviceId {
                index: index as u32,
            };
            let Ok(guard) = self.lock_device(dev, token) else {
                continue;
            };
            if let Some(disagreement) = totals_disagreement(layout, index) {
                admission::recompute_totals(layout, index);
                record.repairs.fetch_add(1, Ordering::Relaxed);
                findings.push(Finding {
                    found: format!(
                        "the totals of {} disagreed with its slots: {disagreement}",
                        layout::load_text(&record.name)
                    ),
                    done: "recomputed them from the slots".into(),
                    repaired: true,
                });
            }
            drop(guard);
            admission::wake_waiters(record);
        }
        self.leave_here(me);
        findings
    }

    /// What is wrong with the ledger as a reader sees it, without changing anything (for
    /// `vramguard status` and `doctor`): totals that disagree with the slots.
    pub fn examine(&self) -> Vec<String> {
        if self.intact().is_err() {
            return Vec::new();
        }
        let layout = self.layout();
        (0..self.device_count())
            .filter(|&index| layout.devices[index].state.load(Ordering::Acquire) == DEVICE_READY)
            .filter_map(|index| {
                let name = layout::load_text(&layout.devices[index].name);
                // The totals change under the lock while we read: only a disagreement that
                // stays across a few looks counts.
                (0..3)
                    .map(|_| totals_disagreement(layout, index))
                    .collect::<Option<Vec<String>>>()
                    .and_then(|seen| seen.last().cloned())
                    .map(|what| format!("the totals of {name} disagree with its slots: {what}"))
            })
            .collect()
    }
}

/// Whether a file just made by a rebuilder or creator holds nothing yet.
fn layout_is_empty(layout: &layout::LedgerLayout) -> bool {
    layout.header.slot_high_water.load(Ordering::Acquire) == 0
        && layout.header.device_high_water.load(Ordering::Acquire) == 0
}

/// How `device`'s totals differ from the sums over the slots, in words; `None` if they agree.
fn totals_disagreement(layout: &layout::LedgerLayout, device: usize) -> Option<String> {
    let record = layout.devices.get(device)?;
    let (mut held, mut in_flight, mut charged) = (0u64, 0u64, 0u64);
    for slot in &layout.slots {
        let share = &slot.devices[device];
        let (h, f, c) = (
            share.held.load(Ordering::Relaxed),
            share.in_flight.load(Ordering::Relaxed),
            share.claim.load(Ordering::Relaxed),
        );
        held = held.saturating_add(h);
        in_flight = in_flight.saturating_add(f);
        charged = charged.saturating_add(h.saturating_add(f).max(c));
    }
    let recorded = (
        record.held.load(Ordering::Relaxed),
        record.in_flight.load(Ordering::Relaxed),
        record.charged.load(Ordering::Relaxed),
    );
    (recorded != (held, in_flight, charged)).then(|| {
        format!(
            "charged {} held {} in flight {} recorded, the slots say {charged}, {held}, {in_flight}",
            recorded.2, recorded.0, recorded.1
        )
    })
}
