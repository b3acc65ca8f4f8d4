fn main() -> std::process::ExitCode {
    aion_reconcile::cli::main()
}
