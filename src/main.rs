fn main() {
    std::process::exit(wiggum_cli::main());
}
