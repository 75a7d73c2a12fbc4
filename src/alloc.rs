//! The process's allocator: mimalloc, asked the way its own `malloc` is fastest.
//!
//! Not a phase: `main.rs` installs [`MiMalloc`] as the global allocator. The `mimalloc` crate's
//! allocator passes every request to `mi_malloc_aligned`. mimalloc 3 serves that from its fast
//! path only while the size class's current page has a free block; otherwise it over-allocates
//! (a block of a larger class, aligned by hand) unless the class's size is a power of two, even
//! for an alignment of 1. A proxied request made ~20 of its ~115 allocations that way (callgrind:
//! `mi_theap_malloc_zero_aligned_at_overalloc`), each about three plain allocations' cost.
//! Here a request whose alignment every mimalloc block already has takes `mi_malloc`, as Rust's
//! own `System` allocator takes `malloc`; the others keep the aligned calls. Written by hand
//! because the crate lacks it (purpleprotocol/mimalloc_rust pull request 170, open); the only
//! `unsafe` in Rampart.
//!
//! Large blocks (above [`LARGE`]: a whole response body gathered for gzip, libdeflate's
//! state, Pingora's 64 KiB body buffers, an encoded body's copy) come from the C library's
//! `malloc` instead. mimalloc 3 advises its arenas
//! `MADV_HUGEPAGE`, so the kernel backs every 2 MiB of arena a block touches with a huge
//! page: right for the small blocks every request makes (turning huge pages off cost 5-14% of
//! a passthrough's CPU here), wasteful for 64 connections' 150 KB bodies, which held the peak
//! RSS of a whole bench run at 74-78 MiB. The C library's heap uses ordinary pages and hands
//! freed ones back: peak 63-65 MiB with this split, for 16-21% more CPU on the 150 KB gzip
//! (its pages are faulted in again; it still runs well ahead of nginx).
//!
//! [`init`] sets mimalloc's purge delay to 100 ms, which its arenas multiply by 10
//! (`arena_purge_mult`): a freed small page goes back to the system after a second unused.
//! Shorter delays made a passthrough fault pages in again at a steady rate (10 ms: 0.37-0.45
//! faults per request, 30 ms: 0.23-0.31; 100 ms: 0.01-0.09), each a page zeroed by the kernel.
//! The blocks from 16 KiB up, which made the peak in the 150 KB gzip, are the C library's so
//! that the small pages held longer do not raise it (BENCHMARKS.md, session 18).
//!
//! Invariant: every block returned is aligned to its layout's alignment, and every block is
//! freed by the allocator that made it: [`from_libc`] decides both from the layout alone.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every mimalloc block is aligned to a machine word: block sizes are multiples of it and pages
/// start aligned to more.
const WORD: usize = std::mem::align_of::<usize>();

/// Blocks above this size come from the C library (the module header says why), Pingora's
/// 64 KiB body read buffer among them; mimalloc keeps the small blocks every request makes
/// (its small pages hold blocks up to 10 KiB).
const LARGE: usize = 16 * 1024;

/// The alignment every C library `malloc` block has on the platforms Rampart builds for
/// (glibc's and macOS's `MALLOC_ALIGNMENT` on 64-bit targets).
const LIBC_ALIGN: usize = 16;

/// mimalloc as the global allocator, the C library's for large blocks.
pub struct MiMalloc;

/// Whether a block of this layout is the C library's. The same answer for the same layout,
/// which `GlobalAlloc` passes again when it frees or resizes the block.
fn from_libc(align: usize, size: usize) -> bool {
    size > LARGE && align <= LIBC_ALIGN
}

/// The purge delay [`init`] sets, in milliseconds.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// `mi_option_purge_delay` of mimalloc.h (15 in mimalloc 2 and 3), which libmimalloc-sys does
/// not name. The unit test reads it back to check the number.
const PURGE_DELAY: mi::mi_option_t = 15;

/// Called first in `main`: mimalloc's purge delay is 100 ms (1 s in its arenas) instead of its
/// default 1 s (10 s in its arenas), unless `MIMALLOC_PURGE_DELAY` chooses otherwise.
pub fn init() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option mimalloc reads at each purge; any value is valid.
        unsafe { mi::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Whether a block of `size` bytes from the plain calls has alignment `align`. A size below the
/// alignment could be served from a smaller class: the aligned calls then.
fn plain(align: usize, size: usize) -> bool {
    align <= WORD && align <= size
}

/// A new block for `layout`: from `plain` (`mi_malloc`, `mi_zalloc`) where its blocks have the
/// alignment, else from `aligned` (their `_aligned` forms).
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
#[inline]
unsafe fn new_block(
    layout: Layout,
    plain_call: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_call: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    if plain(layout.align(), layout.size()) {
        unsafe { plain_call(layout.size()) }.cast()
    } else {
        unsafe { aligned_call(layout.size(), layout.align()) }.cast()
    }
}

// SAFETY: each call passes the layout's size (and, for the aligned calls, its alignment, a
// power of two as `Layout` guarantees) to the mimalloc function with the same contract as the
// `GlobalAlloc` method; `plain` holds only where mimalloc's plain blocks have the alignment.
// `mi_free` and `mi_realloc` take any block mimalloc returned, aligned or not. The C library's
// calls get only layouts `from_libc` accepts, whose alignment its blocks always have, and
// only blocks they made (`from_libc` gives the same answer for the layout on free).
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if from_libc(layout.align(), layout.size()) {
            return unsafe { libc::malloc(layout.size()) }.cast();
        }
        unsafe { new_block(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if from_libc(layout.align(), layout.size()) {
            return unsafe { libc::calloc(1, layout.size()) }.cast();
        }
        unsafe { new_block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if from_libc(layout.align(), layout.size()) {
            return unsafe { libc::free(ptr.cast()) };
        }
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (was_libc, is_libc) = (
            from_libc(layout.align(), layout.size()),
            from_libc(layout.align(), new_size),
        );
        if was_libc && is_libc {
            return unsafe { libc::realloc(ptr.cast(), new_size) }.cast();
        }
        if was_libc || is_libc {
            // Across the boundary: a block from the other allocator, the bytes, the old freed.
            // SAFETY: `new_size` is non-zero and fits `isize` when rounded to the alignment,
            // as `GlobalAlloc::realloc` requires of its caller.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                let kept = layout.size().min(new_size);
                unsafe { std::ptr::copy_nonoverlapping(ptr, new, kept) };
                unsafe { self.dealloc(ptr, layout) };
            }
            return new;
        }
        if plain(layout.align(), new_size) {
            unsafe { mi::mi_realloc(ptr.cast::<c_void>(), new_size) }.cast()
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()) }.cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(ptr: *mut u8, align: usize) -> bool {
        !ptr.is_null() && (ptr as usize).is_multiple_of(align)
    }

    fn all(ptr: *mut u8, len: usize, byte: u8) -> bool {
        unsafe { std::slice::from_raw_parts(ptr, len) }
            .iter()
            .all(|&b| b == byte)
    }

    /// Small sizes one by one, larger ones in steps, at every alignment from 1 to a page,
    /// through every call: each block is aligned, zeroed when asked, and keeps its bytes when
    /// it grows and shrinks. The blocks stay alive until the end, so pages fill and the slow
    /// paths run too.
    #[test]
    fn blocks_are_aligned_zeroed_and_kept() {
        let mut live = Vec::new();
        for size in (1..=256).chain((257..20_000).step_by(97)) {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = |size| Layout::from_size_align(size, align).expect("layout");
                unsafe {
                    let zeroed = MiMalloc.alloc_zeroed(layout(size));
                    assert!(aligned(zeroed, align), "zeroed {size}/{align}");
                    assert!(all(zeroed, size, 0), "zeroed {size}/{align}");
                    let block = MiMalloc.alloc(layout(size));
                    assert!(aligned(block, align), "{size}/{align}");
                    block.write_bytes(0xA5, size);
                    let grown = MiMalloc.realloc(block, layout(size), size * 3);
                    assert!(aligned(grown, align), "grown {size}/{align}");
                    assert!(all(grown, size, 0xA5), "grown {size}/{align}");
                    let small = size / 2 + 1;
                    let shrunk = MiMalloc.realloc(grown, layout(size * 3), small);
                    assert!(aligned(shrunk, align), "shrunk {size}/{align}");
                    assert!(all(shrunk, small, 0xA5), "shrunk {size}/{align}");
                    live.push((shrunk, layout(small)));
                    live.push((zeroed, layout(size)));
                }
            }
        }
        for (ptr, layout) in live {
            unsafe { MiMalloc.dealloc(ptr, layout) };
        }
    }

    /// `PURGE_DELAY` is mimalloc's purge delay: 1000 ms by default in mimalloc 3, 100 after
    /// `init`, and an operator's `MIMALLOC_PURGE_DELAY` left as it is.
    #[test]
    fn init_sets_the_purge_delay_unless_the_environment_does() {
        // Only this test calls `init`, so this is mimalloc's own value.
        let before = unsafe { mi::mi_option_get(PURGE_DELAY) };
        init();
        let after = unsafe { mi::mi_option_get(PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            assert_eq!(after, before, "the environment's value was replaced");
        } else {
            // mimalloc 3's default for option 15: the right number.
            assert_eq!(before, 1000);
            assert_eq!(after, PURGE_DELAY_MS);
        }
    }

    /// Around the C library's threshold and well above it, at alignments it serves and
    /// beyond: aligned, zeroed when asked, and the bytes kept when a block grows from
    /// mimalloc's side to the C library's and shrinks back.
    #[test]
    fn large_blocks_cross_between_the_allocators_and_keep_their_bytes() {
        for size in [LARGE - 1, LARGE, LARGE + 1, 150_000, 2 << 20] {
            for align in [1, 8, 16, 32, 4096] {
                let layout = |size| Layout::from_size_align(size, align).expect("layout");
                unsafe {
                    let zeroed = MiMalloc.alloc_zeroed(layout(size));
                    assert!(aligned(zeroed, align), "zeroed {size}/{align}");
                    assert!(all(zeroed, size, 0), "zeroed {size}/{align}");
                    MiMalloc.dealloc(zeroed, layout(size));
                    let small = 1000;
                    let block = MiMalloc.alloc(layout(small));
                    block.write_bytes(0x5A, small);
                    let grown = MiMalloc.realloc(block, layout(small), size);
                    assert!(aligned(grown, align), "grown {size}/{align}");
                    assert!(all(grown, small, 0x5A), "grown {size}/{align}");
                    grown.write_bytes(0x3C, size);
                    let larger = MiMalloc.realloc(grown, layout(size), size * 2);
                    assert!(aligned(larger, align), "larger {size}/{align}");
                    assert!(all(larger, size, 0x3C), "larger {size}/{align}");
                    let shrunk = MiMalloc.realloc(larger, layout(size * 2), small);
                    assert!(aligned(shrunk, align), "shrunk {size}/{align}");
                    assert!(all(shrunk, small, 0x3C), "shrunk {size}/{align}");
                    MiMalloc.dealloc(shrunk, layout(small));
                }
            }
        }
    }
}
