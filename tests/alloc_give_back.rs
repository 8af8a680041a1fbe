//! `portico::alloc::give_back` hands memory a quiet thread freed back to
//! the system at once (what the parking lot calls once connections park).
//! Its own test binary: the process's RSS is the measure, and no other test
//! allocates meanwhile.

#[global_allocator]
static GLOBAL: portico::alloc::Mimalloc = portico::alloc::Mimalloc;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_freed_by_a_quiet_thread_goes_back_to_the_system_when_given_back() {
    std::thread::spawn(|| {
        // 40 MiB in blocks the size of a parked connection's task and buffers, all touched.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 2048]).collect();
        let held = rss_kib();
        drop(blocks);
        let freed = rss_kib();
        portico::alloc::give_back();
        let given = rss_kib();
        assert!(
            freed.saturating_sub(given) >= 20 * 1024,
            "RSS {held} KiB with the blocks, {freed} KiB freed, {given} KiB given back"
        );
    })
    .join()
    .unwrap();
}
