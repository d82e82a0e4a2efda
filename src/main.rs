//! `clip`: train CLIP-style dual encoders and search with them.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if args.reuses_freed_memory() {
        clip::reuse_freed_memory();
    }
    if let Err(err) = cli::run(args) {
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
