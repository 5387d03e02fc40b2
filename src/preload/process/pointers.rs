//! The map from device pointers to what they hold, specialised for the one insert and one remove
//! that every allocation and free makes.
//!
//! Open addressing with linear probing over one array of `(pointer, value)` slots, a Fibonacci
//! hash of the pointer (its high product bits pick the slot, so addresses aligned to large powers
//! of two still spread), and backward-shift deletion, which leaves no tombstones: a lookup stops
//! at the first empty slot. The table grows to twice its size when it would pass 7/8 full.
//! Pointer 0 marks an empty slot, so a pointer 0 (which no driver hands out) lives beside the
//! array. This does by hand what a general hash map does with more machinery: the guard's
//! benchmark measured the general map's insert and remove at about 150 instructions per
//! allocation and free pair, a good share of everything the guard adds to it.
#![deny(unsafe_code)]

/// A key of 0 in a slot means the slot is empty.
const EMPTY: u64 = 0;

/// The smallest array allocated (a power of two).
const MIN_SLOTS: usize = 16;

/// Device pointers and their values.
#[derive(Debug)]
pub struct PointerMap<V: Copy> {
    /// `slots.len()` is 0 or a power of two; the value is `Some` exactly when the key is not
    /// [`EMPTY`].
    slots: Vec<(u64, Option<V>)>,
    /// Occupied slots.
    len: usize,
    /// `64 - log2(slots.len())`: the product's top bits that pick a slot (kept rather than
    /// recomputed: counting bits is a long instruction sequence on baseline x86-64).
    shift: u32,
    /// The value of pointer 0, should a driver ever hand it out.
    zero: Option<V>,
}

impl<V: Copy> Default for PointerMap<V> {
    fn default() -> Self {
        PointerMap {
            slots: Vec::new(),
            len: 0,
            shift: 64,
            zero: None,
        }
    }
}

impl<V: Copy> PointerMap<V> {
    /// The home slot of `pointer` (the array is not empty).
    #[inline]
    fn home(&self, pointer: u64) -> usize {
        // Fibonacci hashing: the top bits of the product by 2^64 / phi.
        let product = pointer.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (product >> self.shift) as usize
    }

    /// Where `pointer` is, if present.
    #[inline]
    fn find(&self, pointer: u64) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut index = self.home(pointer);
        loop {
            let key = self.slots[index].0;
            if key == pointer {
                return Some(index);
            }
            if key == EMPTY {
                return None;
            }
            index = (index + 1) & mask;
        }
    }

    /// Records `value` for `pointer`; returns the value it replaces.
    #[inline]
    pub fn insert(&mut self, pointer: u64, value: V) -> Option<V> {
        if pointer == EMPTY {
            return self.zero.replace(value);
        }
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut index = self.home(pointer);
        loop {
            let slot = &mut self.slots[index];
            if slot.0 == pointer {
                return slot.1.replace(value);
            }
            if slot.0 == EMPTY {
                *slot = (pointer, Some(value));
                self.len += 1;
                return None;
            }
            index = (index + 1) & mask;
        }
    }

    /// Forgets `pointer`; returns its value.
    #[inline]
    pub fn remove(&mut self, pointer: u64) -> Option<V> {
        if pointer == EMPTY {
            return self.zero.take();
        }
        let mut hole = self.find(pointer)?;
        let value = self.slots[hole].1.take();
        let mask = self.slots.len() - 1;
        // Backward shift: move up every later entry of the run that may sit in the hole (its home
        // is not cyclically within (hole, next]), so that no lookup meets a gap before its key.
        let mut next = (hole + 1) & mask;
        loop {
            let key = self.slots[next].0;
            if key == EMPTY {
                break;
            }
            let home = self.home(key);
            let distance_to_next = next.wrapping_sub(home) & mask;
            let distance_to_hole = next.wrapping_sub(hole) & mask;
            if distance_to_next >= distance_to_hole {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = (EMPTY, None);
        self.len -= 1;
        value
    }

    /// Every pointer and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        self.zero.map(|value| (EMPTY, value)).into_iter().chain(
            self.slots
                .iter()
                .filter_map(|&(key, value)| value.map(|value| (key, value))),
        )
    }

    /// Doubles the array (or makes the first one) and re-inserts every entry.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![(EMPTY, None); size]);
        self.shift = 64 - size.trailing_zeros();
        self.len = 0;
        for (key, value) in old {
            if let Some(value) = value {
                self.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn check_same(map: &PointerMap<u64>, model: &HashMap<u64, u64>) {
        assert_eq!(map.len + usize::from(map.zero.is_some()), model.len());
        let mut seen: Vec<(u64, u64)> = map.iter().collect();
        let mut expected: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        seen.sort_unstable();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    /// Random inserts, replacements and removes agree with the standard map at every step, for
    /// pointers drawn from a few aligned ranges (as a driver hands them out) so that runs and
    /// wrap-around at the end of the array happen.
    #[test]
    fn agrees_with_a_general_map_under_random_operations() {
        for seed in 1..=20u64 {
            // Seeded, so that failures repeat.
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut map = PointerMap::default();
            let mut model = HashMap::new();
            let alignment = [1u64, 512, 2 << 20][seed as usize % 3];
            for step in 0..4000 {
                let pointer = (rng.u64(..) % 300) * alignment + 0x7f00_0000_0000 * (seed % 2);
                match rng.u64(..) % 3 {
                    0 | 1 => assert_eq!(
                        map.insert(pointer, step),
                        model.insert(pointer, step),
                        "insert {pointer:#x} (seed {seed}, step {step})"
                    ),
                    _ => assert_eq!(
                        map.remove(pointer),
                        model.remove(&pointer),
                        "remove {pointer:#x} (seed {seed}, step {step})"
                    ),
                }
                for probe in [pointer, pointer + alignment] {
                    let found = match probe {
                        EMPTY => map.zero,
                        _ => map.find(probe).and_then(|i| map.slots[i].1),
                    };
                    assert_eq!(found, model.get(&probe).copied(), "lookup {probe:#x}");
                }
            }
            check_same(&map, &model);
            let keys: Vec<u64> = model.keys().copied().collect();
            for key in keys {
                assert_eq!(map.remove(key), model.remove(&key));
            }
            check_same(&map, &model);
            assert_eq!(map.len, 0);
        }
    }

    #[test]
    fn pointer_zero_is_kept_beside_the_array() {
        let mut map = PointerMap::default();
        assert_eq!(map.remove(0), None);
        assert_eq!(map.insert(0, 5u32), None);
        assert_eq!(map.insert(0x1000, 6), None);
        assert_eq!(map.insert(0, 7), Some(5));
        let mut all: Vec<_> = map.iter().collect();
        all.sort_unstable();
        assert_eq!(all, [(0, 7), (0x1000, 6)]);
        assert_eq!(map.remove(0), Some(7));
        assert_eq!(map.remove(0x1000), Some(6));
        assert_eq!(map.iter().count(), 0);
    }

    #[test]
    fn grows_and_keeps_every_entry() {
        let mut map = PointerMap::default();
        for i in 1..=10_000u64 {
            assert_eq!(map.insert(i << 21, i), None);
        }
        assert!(map.slots.len().is_power_of_two());
        assert!(map.len * 8 <= map.slots.len() * 7);
        for i in 1..=10_000u64 {
            assert_eq!(map.remove(i << 21), Some(i));
        }
        assert_eq!(map.len, 0);
    }
}
