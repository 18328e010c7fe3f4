//! The runtime: an actix System on a tokio multi-thread runtime. tonic runs on
//! the tokio workers; actors run on arbiters (see [`crate::actors`]).

use std::future::Future;

/// Runs `fut` to completion inside an actix System on a multi-thread tokio
/// runtime, the way `prism serve` does.
pub fn block_on_multi_thread<F: Future>(fut: F) -> F::Output {
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("prism-worker")
            .build()
            .expect("tokio runtime builds")
    });
    system.block_on(fut)
}

/// Runs `fut` inside an actix System on one thread; with `actor_threads: 0`
/// every actor shares that thread and its clock, so `tokio::time::pause()`
/// drives timers deterministically.
pub fn block_on_current_thread<F: Future>(fut: F) -> F::Output {
    actix::System::new().block_on(fut)
}
