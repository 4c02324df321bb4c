//! Memory that stays bounded without a scrape. A binary of its own: it counts
//! every byte the process allocates, so no other test may run beside it.

#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

/// The system allocator, counting the bytes live right now.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const SAMPLES: usize = 2_000_000;
/// What may stay allocated once samples are folded: buckets, and blocks the
/// exporter's epoch-based reclamation has not freed yet (one thread's bag of
/// deferred frees, at most about 2 MB).
const BOUND: usize = 4 << 20;

fn record(metrics: &collabd::telemetry::Metrics, samples: usize) {
    for i in 0..samples {
        metrics.ws_queue_depth(i % 7);
    }
}

/// Histogram samples wait in the exporter until upkeep folds them into
/// buckets (16 bytes each: the value and an instant). A running server must
/// fold them on its own timer: two million samples are recorded, nothing
/// scrapes `/metrics`, and their memory must be given back while recording
/// goes on at a trickle (as it does on a live server, whose recordings also
/// let the exporter's deferred frees run). One test, so that nothing else
/// allocates beside the measurement.
#[tokio::test]
async fn histogram_samples_are_freed_without_a_scrape() {
    // First the mechanism, on a recorder nobody runs upkeep for.
    let bare = collabd::telemetry::Metrics::new();
    let before = live_bytes();
    record(&bare, SAMPLES);
    let held = live_bytes().saturating_sub(before);
    assert!(held > 4 * BOUND, "only {held} bytes held before upkeep");
    eventually(|| async {
        record(&bare, 1_000);
        bare.run_upkeep();
        live_bytes().saturating_sub(before) < BOUND
    })
    .await;

    // Then a server, left alone: no scrape, no upkeep called from here.
    let app = spawn_app(Kind::Memory).await;
    let before = live_bytes();
    record(&app.state.metrics, SAMPLES);
    eventually(|| async {
        record(&app.state.metrics, 1_000);
        live_bytes().saturating_sub(before) < BOUND
    })
    .await;
    app.shutdown().await.unwrap();
}
