//! The few collective operations a sharded step needs between ranks (processes, GPUs or
//! threads that each hold a shard of a model's leaves).
//!
//! A sharded step reduces a handful of scalars per step (see [`crate::sharded`]), so the trait
//! asks for little: a sum and a max over a short `f64` slice, and an all-gather of a few `u64`
//! words to check at start-up that every rank was built with the same config and layout. The
//! `bloop-mpi` crate of this repository implements it over MPI; [`SingleRank`] is the trivial
//! one-process case and [`ThreadGroup`] runs ranks as threads of one process (for tests).

use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};

/// Collective operations over a fixed group of ranks. Every rank must call the same operations
/// in the same order with slices of the same length; the results are the same on every rank.
pub trait Collective {
    /// This rank's index, `0..size()`.
    fn rank(&self) -> usize;

    /// How many ranks take part.
    fn size(&self) -> usize;

    /// Replaces `values` by their element-wise sum over all ranks.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()>;

    /// Replaces `values` by their element-wise maximum over all ranks (a logical or for flags
    /// that are 0 or 1). What a NaN does is up to the implementation; the sharded step only
    /// passes flags.
    fn all_reduce_max(&self, values: &mut [f64]) -> Result<()>;

    /// Every rank's `values`, concatenated in rank order.
    fn all_gather(&self, values: &[u64]) -> Result<Vec<u64>>;
}

/// One rank alone: every operation returns its input.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_max(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn all_gather(&self, values: &[u64]) -> Result<Vec<u64>> {
        Ok(values.to_vec())
    }
}

/// What the members of a [`ThreadGroup`] share: each round, every rank deposits its slice;
/// the last one to arrive publishes them all and wakes the others.
#[derive(Default)]
struct Round {
    /// Completed rounds.
    generation: u64,
    /// This round's deposits, by rank.
    deposits: Vec<Option<Vec<u64>>>,
    /// The last completed round's deposits.
    published: Arc<Vec<Vec<u64>>>,
    /// Set when a member was dropped (a thread that returned early or panicked): every waiting
    /// or later operation fails instead of waiting forever.
    abandoned: Option<usize>,
}

struct Shared {
    size: usize,
    round: Mutex<Round>,
    changed: Condvar,
}

/// Ranks as threads of one process, for tests of sharded steps without MPI. Make the group
/// with [`ThreadGroup::new`] and move one member into each thread. When a member is dropped
/// before the others finish (its thread returned or panicked), the others' operations fail
/// with [`Error::Collective`] instead of waiting forever.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ThreadGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadGroup").field("rank", &self.rank).field("size", &self.shared.size).finish()
    }
}

impl ThreadGroup {
    /// `size` members, rank 0 first.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            size,
            round: Mutex::new(Round { deposits: vec![None; size], ..Default::default() }),
            changed: Condvar::new(),
        });
        (0..size).map(|rank| ThreadGroup { rank, shared: shared.clone() }).collect()
    }

    /// Deposits `words` and returns every rank's words of this round, in rank order.
    fn exchange(&self, operation: &'static str, words: Vec<u64>) -> Result<Arc<Vec<Vec<u64>>>> {
        let failed = |message: String| Error::Collective { operation, message };
        let mut round = self.shared.round.lock().map_err(|_| failed("a member panicked".into()))?;
        if let Some(rank) = round.abandoned {
            return Err(failed(format!("rank {rank} left the group")));
        }
        if round.deposits[self.rank].is_some() {
            return Err(failed("this rank is already inside an operation".into()));
        }
        round.deposits[self.rank] = Some(words);
        let generation = round.generation;
        if round.deposits.iter().all(Option::is_some) {
            let all: Vec<Vec<u64>> = round.deposits.iter_mut().map(|d| d.take().unwrap_or_default()).collect();
            round.published = Arc::new(all);
            round.generation += 1;
            self.shared.changed.notify_all();
            return Ok(round.published.clone());
        }
        loop {
            round = self.shared.changed.wait(round).map_err(|_| failed("a member panicked".into()))?;
            if round.generation != generation {
                return Ok(round.published.clone());
            }
            if let Some(rank) = round.abandoned {
                return Err(failed(format!("rank {rank} left the group")));
            }
        }
    }

    fn reduce(&self, operation: &'static str, values: &mut [f64], op: fn(f64, f64) -> f64) -> Result<()> {
        let all = self.exchange(operation, values.iter().map(|v| v.to_bits()).collect())?;
        if all.iter().any(|w| w.len() != values.len()) {
            return Err(Error::Collective { operation, message: "ranks passed slices of different lengths".into() });
        }
        for (i, v) in values.iter_mut().enumerate() {
            // Rank order, so every rank computes bit for bit the same result.
            *v = all.iter().map(|w| f64::from_bits(w[i])).reduce(op).unwrap_or(*v);
        }
        Ok(())
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        let mut round = self.shared.round.lock().unwrap_or_else(|p| p.into_inner());
        round.abandoned.get_or_insert(self.rank);
        self.shared.changed.notify_all();
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        self.reduce("all_reduce_sum", values, |a, b| a + b)
    }

    fn all_reduce_max(&self, values: &mut [f64]) -> Result<()> {
        // NaN wins, so a NaN flag is never lost.
        self.reduce("all_reduce_max", values, |a, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) })
    }

    fn all_gather(&self, values: &[u64]) -> Result<Vec<u64>> {
        let all = self.exchange("all_gather", values.to_vec())?;
        if all.iter().any(|w| w.len() != values.len()) {
            return Err(Error::Collective {
                operation: "all_gather",
                message: "ranks passed slices of different lengths".into(),
            });
        }
        Ok(all.iter().flatten().copied().collect())
    }
}

impl<C: Collective + ?Sized> Collective for &C {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn size(&self) -> usize {
        (**self).size()
    }

    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        (**self).all_reduce_sum(values)
    }

    fn all_reduce_max(&self, values: &mut [f64]) -> Result<()> {
        (**self).all_reduce_max(values)
    }

    fn all_gather(&self, values: &[u64]) -> Result<Vec<u64>> {
        (**self).all_gather(values)
    }
}
