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
//! Invariant: every block returned is aligned to its layout's alignment.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every mimalloc block is aligned to a machine word: block sizes are multiples of it and pages
/// start aligned to more.
const WORD: usize = std::mem::align_of::<usize>();

/// mimalloc as the global allocator.
pub struct MiMalloc;

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
// `mi_free` and `mi_realloc` take any block mimalloc returned, aligned or not.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { new_block(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { new_block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
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
}
