//! The command line: one file per subcommand, the same engine calls as the explorer.

pub mod analysis;
pub mod bar;
pub mod bench;
pub mod bench_layers;
pub mod bench_ours;
pub mod bench_scale;
pub mod bench_scatter;
pub mod codes;
pub mod geometry;
pub mod import;
pub mod models;
pub mod plot;
pub mod relocate;
pub mod table;
pub mod train;
pub mod transfer;

use clap::{Parser, Subcommand};

/// latent-atlas: compare the latent spaces of generative models.
///
/// Without a subcommand it opens the explorer on the embedded default (synthfaces + the zoo).
#[derive(Debug, Parser)]
#[command(name = "latent-atlas", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Explorer only: the right-panel tab to open on.
    #[arg(long, value_enum)]
    pub tab: Option<crate::app::settings::RightTab>,
    /// Explorer only: the source model (zoo name or directory) instead of the saved one.
    #[arg(long)]
    pub source: Option<String>,
    /// Explorer only: the target model (zoo name or directory) instead of the saved one.
    #[arg(long)]
    pub target: Option<String>,
    /// Explorer only: the dataset spec (e.g. `orl`, `celeba:ROOT`) instead of the saved one.
    #[arg(long)]
    pub data: Option<String>,
}

/// All subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (VAE, Split-VAE, GAN, or the recoder of a GAN) on a dataset.
    Train(train::TrainArgs),
    /// List the models of the zoo with latent sizes and measured quality.
    Models(models::ModelsArgs),
    /// Decode random latent codes of a model into a PNG grid.
    Sample(models::SampleArgs),
    /// Measure a model's held-out reconstruction quality (R-MSE) and store it in its config.
    Eval(models::EvalArgs),
    /// Encode images of a dataset into latent codes (.npy, float32, N x d) plus their sample ids.
    Encode(codes::EncodeArgs),
    /// Decode latent codes from a float32 .npy (N x d) into PNGs and, with --npy, an image .npy.
    Decode(codes::DecodeArgs),
    /// Write a reconstruction grid (originals above reconstructions) for held-out images.
    Recon(models::ReconArgs),
    /// Show a dataset's size, splits and skipped files.
    Data(models::DataArgs),
    /// Convert the gan-face-generate 1.1.1 PyTorch checkpoint into a model directory.
    ImportRefdcgan(import::ImportArgs),
    /// Reconstruction gain of every latent variable (paper §5.1).
    Gain(analysis::GainArgs),
    /// Sector occupancy of the most informative variables as the threshold grows (§5.3).
    Sectors(analysis::SectorsArgs),
    /// Build a support set (sector extremes) or a baseline anchor set; save it as JSON.
    SupportSet(analysis::SupportArgs),
    /// Fit a map between two models (or two code files) and measure it on held-out samples.
    Fit(relocate::FitArgs),
    /// The Table-2 matrix for all ordered pairs of the zoo.
    Table(table::TableArgs),
    /// The paper's Fig. 2: originals, source reconstructions, target decodings after relocation.
    Montage(relocate::MontageArgs),
    /// Out-of-range check (§7): R-MSE on the training distribution vs real faces and support sets.
    Ood(analysis::OodArgs),
    /// Benchmark training, encoding, decoding and map fits against PyTorch (idle machine!).
    Bench(bench::BenchArgs),
    /// Local Basis warpage (distances between local bases vs k) and transfer through a map.
    LocalBasis(geometry::LocalBasisArgs),
    /// Ground-truth probes (generating factors, identities) per model and after mapping.
    Probe(geometry::ProbeArgs),
    /// Direction transfer as a figure: traversals along a source model's local directions and
    /// the same codes decoded by the target model through the map.
    TransferMontage(transfer::TransferMontageArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => crate::app::run_native(crate::app::ExplorerConfig {
            start_tab: cli.tab,
            start_pair: (cli.source, cli.target),
            start_data: cli.data,
            ..crate::app::ExplorerConfig::from_defaults()?
        }),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Models(a)) => models::run_models(a),
        Some(Command::Sample(a)) => models::run_sample(a),
        Some(Command::Eval(a)) => models::run_eval(a),
        Some(Command::Encode(a)) => codes::run_encode(a),
        Some(Command::Decode(a)) => codes::run_decode(a),
        Some(Command::Recon(a)) => models::run_recon(a),
        Some(Command::Data(a)) => models::run_data(a),
        Some(Command::ImportRefdcgan(a)) => import::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Gain(a)) => analysis::run_gain(a),
        Some(Command::Sectors(a)) => analysis::run_sectors(a),
        Some(Command::SupportSet(a)) => analysis::run_support(a),
        Some(Command::Fit(a)) => relocate::run_fit(a),
        Some(Command::Table(a)) => table::run(a),
        Some(Command::Montage(a)) => relocate::run_montage(a),
        Some(Command::Ood(a)) => analysis::run_ood(a),
        Some(Command::LocalBasis(a)) => geometry::run_local_basis(a),
        Some(Command::Probe(a)) => geometry::run_probe(a),
        Some(Command::TransferMontage(a)) => transfer::run_transfer_montage(a),
    }
}
