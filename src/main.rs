//! `maitred`: the binary, with CPython linked in. Everything it does is in
//! the library; [`maitred::host`] says how it differs from the `maitred`
//! command a `pip install` gives.

/// mimalloc instead of glibc's allocator: requests allocate and free many
/// small buffers, often on different threads (a response built on a Python
/// thread is freed on the I/O thread), which glibc's arenas handle poorly
/// (see docs/performance.md). Python keeps its own allocator for objects.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let code = maitred::host::main(&maitred::host::Launch::embedded());
    // Python's threads are parked in the job queue: exit without waiting
    // for them or finalizing the interpreter.
    std::process::exit(i32::from(code))
}
