//! The process's allocator: mimalloc, called the way the C library is
//! meant to be called. The `mimalloc` crate's `GlobalAlloc` asks for every
//! block through `mi_malloc_aligned`, whose fast path only serves blocks up
//! to 1 KiB; larger ones (socket and header buffers, about ten per proxied
//! request) took its generic path at about 180 instructions each. A
//! plain `mi_malloc` is already aligned to 16 bytes (and to the size below
//! that), so only a layout asking for more goes through the aligned calls.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

pub struct Mimalloc;

/// The alignment every `mi_malloc` block has (for blocks at least this big).
const PLAIN_ALIGN: usize = 16;

/// Does a plain `mi_malloc` block of `size` bytes have alignment `align`?
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: each call forwards to the mimalloc function for the layout; blocks
// from any of them are freed by `mi_free` and resized by `mi_realloc*`.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

/// Give memory freed on this thread back to the system now, rather than at
/// the thread's next allocations. mimalloc returns (purges) free memory
/// some time after it is freed, but only when a later call on the same
/// thread notices; a worker that goes quiet after a burst (its connections
/// parked, `listener/park.rs`) would otherwise keep it for as long as it
/// stays quiet. Forced, so the purge happens now rather than after
/// mimalloc's delay: 10,000 connections parked kept RSS 0.57 KiB each
/// above where it started (median of 6 runs by hand, 0.50-0.72) with a
/// gentle collect, 0.21 KiB (0.17-0.43) forced. It walks the thread's
/// pages, so it runs only after connections park, at most once per sweep.
pub fn give_back() {
    // SAFETY: a plain call into the allocator, valid on any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_their_layout_asks_for() {
        let a = Mimalloc;
        for size in [1usize, 7, 8, 15, 16, 24, 100, 1024, 1500, 4096, 16 * 1024, 1 << 20] {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let l = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its layout.
                unsafe {
                    let p = a.alloc(l);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size} / {align}");
                    p.write_bytes(0xab, size);
                    let p = a.realloc(p, l, size * 2);
                    assert_eq!(p as usize % align, 0, "realloc {size} / {align}");
                    assert_eq!(*p.add(size - 1), 0xab, "realloc keeps the bytes");
                    a.dealloc(p, Layout::from_size_align(size * 2, align).unwrap());
                    let z = a.alloc_zeroed(l);
                    assert_eq!(z as usize % align, 0, "zeroed {size} / {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, l);
                }
            }
        }
    }
}
