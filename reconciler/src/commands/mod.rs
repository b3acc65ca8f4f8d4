//! One module per subcommand. Each has `Args` (clap) and `run(&Args) -> anyhow::Result<u8>`
//! returning the success exit code; errors go back to `cli::main`. Commands parse their flags and
//! print; the work is elsewhere (`plan` and `apply`: [`crate::reconcile`]).

pub mod apply;
pub mod diff;
pub mod down;
pub mod graph;
pub mod history;
pub mod peers;
pub mod plan;
pub mod render;
pub mod rollback;
pub mod status;
pub mod validate;
