//! The job ids: every job runs as a user and group id of its own, taken from the
//! configured range when it starts and given back only when nothing of it is left (its
//! cgroup is gone, so no process of it can exist). Ids are handed out in turn through
//! the range from a random start, so an id that was just given back is the last to be
//! used again: files a job left in a writable bind mount stay apart from the next jobs'
//! for as long as the range allows.

use std::collections::HashSet;

use crate::config::IdRange;

pub(super) struct IdPool {
    range: IdRange,
    /// The offset in the range where the search for the next free id starts.
    next: u64,
    in_use: HashSet<u32>,
}

impl IdPool {
    pub fn new(range: IdRange, start: u64) -> Self {
        IdPool {
            range,
            next: start % range.count(),
            in_use: HashSet::new(),
        }
    }

    /// A free id, or `None` when every id of the range belongs to a live job.
    pub fn take(&mut self) -> Option<u32> {
        let len = self.range.count();
        if self.in_use.len() as u64 >= len {
            return None;
        }
        // At most `len` steps; far fewer while the range is mostly free.
        for _ in 0..len {
            let id = self.range.first + self.next as u32;
            self.next = (self.next + 1) % len;
            if self.in_use.insert(id) {
                return Some(id);
            }
        }
        None
    }

    /// Gives back an id whose job has left nothing behind.
    pub fn give_back(&mut self, id: u32) {
        self.in_use.remove(&id);
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u32, last: u32) -> IdRange {
        IdRange { first, last }
    }

    #[test]
    fn ids_are_distinct_while_held_and_given_in_turn() {
        let mut p = IdPool::new(range(100, 103), 2);
        let got: Vec<u32> = (0..4).map(|_| p.take().unwrap()).collect();
        assert_eq!(got, [102, 103, 100, 101]);
        assert_eq!(p.take(), None, "every id is held");
        p.give_back(103);
        p.give_back(100);
        // The search goes on from where it was: 102 next, which is held, then 103.
        assert_eq!(p.take(), Some(103));
        assert_eq!(p.take(), Some(100));
        assert_eq!(p.take(), None);
        assert_eq!(p.in_use(), 4);
    }

    #[test]
    fn a_given_back_id_is_the_last_to_come_again() {
        let mut p = IdPool::new(range(1, 1000), 0);
        let first = p.take().unwrap();
        p.give_back(first);
        let next: Vec<u32> = (0..999).map(|_| p.take().unwrap()).collect();
        assert!(!next.contains(&first));
        assert_eq!(p.take(), Some(first));
    }
}
