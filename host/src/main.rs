/// Each execution builds and drops a store, a WASI context and its logs: allocation is
/// on the hot path, and mimalloc's per-thread heaps keep it fast and flat across workers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    runcell::cli::main()
}
