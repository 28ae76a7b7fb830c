fn main() -> std::process::ExitCode {
    runcell::cli::main()
}
