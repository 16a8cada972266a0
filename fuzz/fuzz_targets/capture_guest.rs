#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    secure_tunnel_fuzz::capture_guest(data);
});
