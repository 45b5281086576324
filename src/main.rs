//! latent-atlas binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() {
    latent_atlas::app::mark_launch();
    latent_atlas::model::device::keep_freed_memory();
    latent_atlas::model::device::pin_thread_count();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,wgpu_core=warn,wgpu_hal=warn,naga=warn"),
    )
    .init();
    let cli = latent_atlas::cli::Cli::parse();
    if let Err(e) = latent_atlas::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
