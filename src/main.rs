//! The `tinyllama` command line: flags in `cli/`, the work in the library; this file dispatches.

mod cli;

use anyhow::{Context, Result};
use cli::{Cli, Cmd};

fn main() {
    if let Err(e) = run() {
        // a reader that went away (`generate … | head -1`) ends the output, quietly
        let broken_pipe = e
            .chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
        if broken_pipe {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse_with_defaults();
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("cannot set the thread count")?;
    }
    match cli.cmd {
        Cmd::Pretrain(a) => cli::train::pretrain(*a),
        Cmd::Sft(a) => cli::train::sft(*a),
        Cmd::Dpo(a) => cli::train::dpo(*a),
        Cmd::Prepare(a) => cli::train::prepare(a),
        Cmd::TrainTokenizer { input, vocab_size, output, max_mb } => {
            cli::train::train_tokenizer(input, vocab_size, output, max_mb)
        }
        Cmd::Export(a) => cli::export::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Generate(a) => cli::generate::run(a),
        Cmd::Chat(a) => cli::chat::run(a),
        #[cfg(feature = "serve")]
        Cmd::Serve(a) => cli::serve::run(a),
        Cmd::Info(a) => cli::info::run(a),
        Cmd::Download(a) => cli::hub::download(a),
        Cmd::Bench(b) => cli::bench::run(b),
    }
}
