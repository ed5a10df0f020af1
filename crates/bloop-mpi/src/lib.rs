//! [`bloop::Collective`] over MPI (the `mpi` crate, rsmpi, on Open MPI or any MPI library), for
//! [`bloop::ShardedState`] across processes and hosts.
//!
//! ```no_run
//! let (_universe, comm) = bloop_mpi::init()?;  // MPI_Init, and a panic aborts the whole job
//! # use bloop::Collective;
//! println!("rank {} of {}", comm.rank(), comm.size());
//! // ShardedState::new(..., &comm), then record_sums / exchange_sums(&comm) / record_apply
//! # Ok::<(), bloop::Error>(())
//! ```
//!
//! A rank that panics while the others wait inside a collective would hang the job: MPI has no
//! way to tell the others. [`init`] therefore installs a panic hook ([`abort_on_panic`]) that,
//! after the usual message, calls `MPI_Abort` on `MPI_COMM_WORLD`: `mpirun` then kills every
//! rank and exits non-zero within seconds. A rank that gets an error it cannot recover from
//! should call [`MpiCollective::abort`] for the same reason.

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use bloop::{Collective, Error, Result};

/// A [`Collective`] over an MPI communicator (usually `MPI_COMM_WORLD`). MPI's default error
/// handler aborts the job on a failed operation, so the methods return `Ok` when they return.
pub struct MpiCollective {
    comm: SimpleCommunicator,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective").field("rank", &self.rank()).field("size", &self.size()).finish()
    }
}

impl MpiCollective {
    /// Over `comm` (for example `universe.world()`, or a split of it).
    pub fn new(comm: SimpleCommunicator) -> MpiCollective {
        MpiCollective { comm }
    }

    /// The communicator, for the trainer's own collectives (gradients, parameters).
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// Ends the whole job with `code` (`MPI_Abort`): for a rank that cannot go on, so that the
    /// others do not wait for it forever.
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }
}

/// Initialises MPI (single-threaded: call the collectives from one thread), installs
/// [`abort_on_panic`] and returns the universe (keep it alive: dropping it finalises MPI) and
/// a collective over `MPI_COMM_WORLD`. Fails if MPI was already initialised.
pub fn init() -> Result<(mpi::environment::Universe, MpiCollective)> {
    let universe = mpi::initialize().ok_or_else(|| Error::Collective {
        operation: "init",
        message: "MPI was already initialised in this process".into(),
    })?;
    let comm = MpiCollective::new(universe.world());
    abort_on_panic(comm.rank());
    Ok((universe, comm))
}

/// Installs a panic hook that prints the panic as usual, then aborts the whole MPI job
/// (`MPI_Abort(MPI_COMM_WORLD, 101)`), so that the other ranks never wait for this one.
pub fn abort_on_panic(rank: usize) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!("bloop-mpi: rank {rank} panicked; aborting the MPI job");
        // SAFETY: MPI_Abort may be called from any thread once MPI is initialised (the hook is
        // installed by `init`, after MPI_Init); it does not return on a conforming MPI.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 101);
        }
        std::process::abort();
    }));
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.comm.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_max(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.comm.all_reduce_into(&send[..], values, SystemOperation::max());
        Ok(())
    }

    fn all_gather(&self, values: &[u64]) -> Result<Vec<u64>> {
        // Lengths first, so ranks that pass different lengths get an error, not corrupt memory.
        let mut lengths = vec![0u64; self.size()];
        self.comm.all_gather_into(&(values.len() as u64), &mut lengths[..]);
        if lengths.iter().any(|&n| n != values.len() as u64) {
            return Err(Error::Collective {
                operation: "all_gather",
                message: format!("ranks passed slices of different lengths {lengths:?}"),
            });
        }
        let mut all = vec![0u64; values.len() * self.size()];
        self.comm.all_gather_into(values, &mut all[..]);
        Ok(all)
    }
}

/// The guide's sharding page, whose example compiles as a doc test (`no_run`: it needs a GPU
/// and MPI).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/sharding.md")]
struct Guide;
