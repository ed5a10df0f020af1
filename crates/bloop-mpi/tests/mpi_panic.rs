//! A rank that panics must end the whole job with a non-zero exit, never leave the others
//! waiting inside a collective. `.ci/run` runs this under `mpirun -n 2, 3, 4` and requires a
//! non-zero exit before its `timeout`; on one rank (`cargo test`) there is nobody to leave
//! waiting, so it only checks that the collectives work and exits 0.

use bloop::Collective;

fn main() {
    let (_universe, comm) = bloop_mpi::init().expect("MPI");
    let (rank, size) = (comm.rank(), comm.size());
    let mut values = [1.0];
    comm.all_reduce_sum(&mut values).unwrap();
    assert_eq!(values[0], size as f64);
    if size == 1 {
        println!("mpi_panic: one rank, nothing to abort (run under mpirun -n 2 or more)");
        return;
    }
    if rank == size - 1 {
        panic!("mpi_panic: rank {rank} panics on purpose");
    }
    // The others wait for the rank that panicked, as a sharded step would.
    loop {
        comm.all_reduce_sum(&mut values).unwrap();
    }
}
