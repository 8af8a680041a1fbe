#[global_allocator]
static GLOBAL: portico::alloc::Mimalloc = portico::alloc::Mimalloc;

fn main() {
    portico::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match portico::app::Args::parse(&args) {
        Ok(a) => std::process::exit(portico::app::run(a)),
        Err(msg) => {
            eprintln!("{msg}\n\n{}", portico::app::USAGE);
            std::process::exit(2);
        }
    }
}
