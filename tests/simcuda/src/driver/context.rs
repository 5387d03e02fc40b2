//! Contexts: each thread's current-context stack, created contexts, and reference-counted
//! primary contexts; every active context costs device memory.

use super::{CONTEXT_STACK, Context};
use crate::driver::{CuOutcome, Driver};
use crate::result::CuResult;

impl Driver {
    pub(super) fn with_stack<T>(&self, f: impl FnOnce(&mut Vec<u64>) -> T) -> T {
        let pid = self.pid;
        CONTEXT_STACK.with(|cell| {
            let mut stack = cell.borrow_mut();
            if stack.0 != pid {
                *stack = (pid, Vec::new());
            }
            f(&mut stack.1)
        })
    }

    /// `cuCtxGetCurrent`: the top of this thread's stack (0 when empty).
    pub fn current(&self) -> CuOutcome<u64> {
        self.require_init()?;
        Ok(self.with_stack(|stack| stack.last().copied().unwrap_or(0)))
    }

    /// The current context, which must be alive.
    pub(super) fn current_context(&self) -> CuOutcome<Context> {
        self.current_handle_and_context()
            .map(|(_, context)| context)
    }

    pub(super) fn current_handle_and_context(&self) -> CuOutcome<(u64, Context)> {
        let handle = self.current()?;
        Ok((handle, self.known_context(handle)?))
    }

    pub(super) fn known_context(&self, handle: u64) -> CuOutcome<Context> {
        self.contexts
            .get(&handle)
            .filter(|c| c.alive)
            .copied()
            .ok_or(CuResult::INVALID_CONTEXT)
    }

    /// `cuCtxSetCurrent`.
    pub fn set_current(&mut self, handle: u64) -> CuOutcome {
        self.require_init()?;
        if handle != 0 {
            self.known_context(handle)?;
        }
        self.with_stack(|stack| {
            stack.pop();
            if handle != 0 {
                stack.push(handle);
            }
        });
        Ok(())
    }

    /// `cuCtxPushCurrent`.
    pub fn push_current(&mut self, handle: u64) -> CuOutcome {
        self.require_init()?;
        self.known_context(handle)?;
        self.with_stack(|stack| stack.push(handle));
        Ok(())
    }

    /// `cuCtxPopCurrent`.
    pub fn pop_current(&mut self) -> CuOutcome<u64> {
        self.require_init()?;
        self.with_stack(|stack| stack.pop())
            .ok_or(CuResult::INVALID_CONTEXT)
    }

    /// `cuCtxGetDevice`.
    pub fn context_device(&self) -> CuOutcome<i32> {
        Ok(self.current_context()?.ordinal as i32)
    }

    /// `cuCtxSynchronize`.
    pub fn context_synchronize(&mut self) -> CuOutcome {
        let context = self.current_context()?;
        self.settle_pools(Some(context.machine));
        Ok(())
    }

    pub(super) fn activate_context(&mut self, machine: usize) -> CuOutcome {
        let cost = self.state.context_cost();
        self.charge(machine, cost)?;
        let _guard = self.state.lock();
        self.state.count_contexts_locked(self.slot, machine, 1);
        Ok(())
    }

    /// Returns a context's cost and everything allocated in it.
    pub(super) fn deactivate_context(&mut self, handle: u64) {
        let Some(context) = self.contexts.get_mut(&handle) else {
            return;
        };
        if !context.alive {
            return;
        }
        context.alive = false;
        let machine = context.machine;
        let owned: Vec<u64> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.context == Some(handle))
            .map(|(p, _)| *p)
            .collect();
        let mut bytes = self.state.context_cost();
        for pointer in owned {
            if let Some(allocation) = self.allocations.remove(&pointer) {
                bytes += allocation.bytes;
            }
        }
        self.uncharge(machine, bytes);
        let _guard = self.state.lock();
        self.state.count_contexts_locked(self.slot, machine, -1);
    }

    /// `cuCtxCreate` (all versions): a new context, pushed on this thread's stack.
    pub fn context_create(&mut self, device: i32) -> CuOutcome<u64> {
        let machine = self.machine(device)?;
        self.activate_context(machine)?;
        let reused = self.freed_contexts.as_mut().and_then(Vec::pop);
        let handle = reused.unwrap_or_else(|| self.handle());
        self.contexts.insert(
            handle,
            Context {
                ordinal: device as usize,
                machine,
                alive: true,
            },
        );
        self.with_stack(|stack| stack.push(handle));
        Ok(handle)
    }

    /// `cuCtxDestroy`.
    pub fn context_destroy(&mut self, handle: u64) -> CuOutcome {
        self.require_init()?;
        self.known_context(handle)?;
        if self.primaries.values().any(|p| p.handle == handle) {
            return Err(CuResult::INVALID_CONTEXT);
        }
        self.deactivate_context(handle);
        self.contexts.remove(&handle);
        self.with_stack(|stack| stack.retain(|h| *h != handle));
        if let Some(freed) = self.freed_contexts.as_mut() {
            freed.push(handle);
        }
        Ok(())
    }

    /// `cuDevicePrimaryCtxRetain`.
    pub fn primary_retain(&mut self, device: i32) -> CuOutcome<u64> {
        let machine = self.machine(device)?;
        let ordinal = device as usize;
        let mut primary = self.primaries.get(&ordinal).copied().unwrap_or_default();
        if primary.handle == 0 {
            primary.handle = self.handle();
        }
        if primary.retains == 0 {
            self.activate_context(machine)?;
            self.contexts.insert(
                primary.handle,
                Context {
                    ordinal,
                    machine,
                    alive: true,
                },
            );
        }
        primary.retains += 1;
        self.primaries.insert(ordinal, primary);
        Ok(primary.handle)
    }

    /// `cuDevicePrimaryCtxRelease`.
    pub fn primary_release(&mut self, device: i32) -> CuOutcome {
        self.machine(device)?;
        let primary = self
            .primaries
            .get_mut(&(device as usize))
            .filter(|p| p.retains > 0)
            .ok_or(CuResult::INVALID_CONTEXT)?;
        primary.retains -= 1;
        if primary.retains == 0 {
            let handle = primary.handle;
            self.deactivate_context(handle);
        }
        Ok(())
    }

    /// `cuDevicePrimaryCtxReset`.
    pub fn primary_reset(&mut self, device: i32) -> CuOutcome {
        self.machine(device)?;
        if let Some(primary) = self.primaries.get_mut(&(device as usize)) {
            primary.retains = 0;
            primary.flags = 0;
            let handle = primary.handle;
            self.deactivate_context(handle);
        }
        Ok(())
    }

    /// `cuDevicePrimaryCtxGetState`: (flags, active).
    pub fn primary_state(&self, device: i32) -> CuOutcome<(u32, bool)> {
        self.machine(device)?;
        let primary = self
            .primaries
            .get(&(device as usize))
            .copied()
            .unwrap_or_default();
        Ok((primary.flags, primary.retains > 0))
    }

    /// `cuDevicePrimaryCtxSetFlags`; the legacy form refuses while the context is active.
    pub fn primary_set_flags(&mut self, device: i32, flags: u32, legacy: bool) -> CuOutcome {
        self.machine(device)?;
        if flags & !0xff != 0 {
            return Err(CuResult::INVALID_VALUE);
        }
        let primary = self.primaries.entry(device as usize).or_default();
        if legacy && primary.retains > 0 {
            return Err(CuResult::PRIMARY_CONTEXT_ACTIVE);
        }
        primary.flags = flags;
        Ok(())
    }
}
