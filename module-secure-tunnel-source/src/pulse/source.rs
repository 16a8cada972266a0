//! The source itself: creation and teardown on PulseAudio's main thread, the
//! IO thread's loop, and the callbacks PulseAudio calls on that thread. The
//! decisions are the source engine's (safe Rust); this file only moves data
//! and calls between it and pulsecore.

use std::cell::RefCell;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;

use pulse_module_sys as sys;
use pulse_module_sys::glue;
use pulse_module_sys::glue::modargs::{cstring, Modargs};
use secure_tunnel_guest::capture::MicState;
use secure_tunnel_guest::config::{CaptureConfig, CaptureRawArgs};
use secure_tunnel_guest::source::{Block, SourceEngine, SourceEvent};
use secure_tunnel_protocol::{StreamSpec, MAX_AUDIO_CHUNK};

use super::{no_unwind, pa_log};

const VALID_ARGS: &[&CStr] = &[
    c"server",
    c"source_name",
    c"source_properties",
    c"format",
    c"rate",
    c"channels",
    c"channel_map",
    c"latency_msec",
    c"reconnect_interval_msec",
];

/// Messages the IO thread posts to the source on the main thread, which
/// alone may change the source's property list. The value travels in
/// `offset`.
const MSG_SET_CONNECTED: c_int = sys::pa_source_message_PA_SOURCE_MESSAGE_MAX as c_int;
const MSG_SET_RECONNECTS: c_int = MSG_SET_CONNECTED + 1;
const MSG_SET_CAPTURE: c_int = MSG_SET_CONNECTED + 2;

/// The `secure_tunnel.capture` values, by the index posted in `offset`.
const MIC_STATES: [MicState; 5] = [
    MicState::Disconnected,
    MicState::Host(secure_tunnel_protocol::CaptureState::Idle),
    MicState::Host(secure_tunnel_protocol::CaptureState::AwaitingGrant),
    MicState::Host(secure_tunnel_protocol::CaptureState::Attached),
    MicState::Host(secure_tunnel_protocol::CaptureState::Unavailable),
];

/// Everything one loaded instance owns. Lives in a `Box` whose pointer is
/// stored in `pa_module.userdata` and `pa_source.userdata`.
///
/// Threading: the main thread writes the pointer fields during `init` and
/// `teardown` only, while the IO thread is not running. Between the two the
/// IO thread alone touches `engine` (the source callbacks run on it).
struct Userdata {
    core: *mut sys::pa_core,
    module: *mut sys::pa_module,
    source: *mut sys::pa_source,
    rtpoll: *mut sys::pa_rtpoll,
    poll_item: *mut sys::pa_rtpoll_item,
    thread_mq: sys::pa_thread_mq,
    thread_mq_ready: bool,
    thread: *mut sys::pa_thread,
    engine: RefCell<SourceEngine>,
    max_block: usize,
}

/// Reads and validates the arguments before anything is created.
fn parse_args(
    ma: &Modargs,
    ss: &mut sys::pa_sample_spec,
    map: &mut sys::pa_channel_map,
) -> Result<(CaptureConfig, StreamSpec), String> {
    let spec = glue::stream_spec(ma, ss, map)?;
    let (server, name, latency, reconnect) = (
        ma.get(c"server"),
        ma.get(c"source_name"),
        ma.get(c"latency_msec"),
        ma.get(c"reconnect_interval_msec"),
    );
    let config = CaptureConfig::from_args(CaptureRawArgs {
        server: server.as_deref(),
        source_name: name.as_deref(),
        latency_msec: latency.as_deref(),
        reconnect_interval_msec: reconnect.as_deref(),
    })
    .map_err(|e| e.to_string())?;
    Ok((config, spec))
}

/// `pa__init`: builds the source and starts its IO thread.
///
/// # Safety
/// `m` is a valid module, and this runs on PulseAudio's main thread.
pub(super) unsafe fn init(m: *mut sys::pa_module) -> Result<(), String> {
    // SAFETY: m is valid per contract; core and argument are set by PulseAudio
    // before init is called.
    let (core, argument) = unsafe { ((*m).core, (*m).argument) };
    // SAFETY: argument is null or a NUL-terminated string owned by the module.
    let ma = unsafe { Modargs::parse(argument, VALID_ARGS) }.ok_or_else(|| {
        let valid: Vec<_> = VALID_ARGS.iter().map(|k| k.to_string_lossy()).collect();
        format!(
            "failed to parse module arguments (unknown key or bad quoting); valid keys: {}",
            valid.join(", ")
        )
    })?;
    // SAFETY: core is valid while the daemon runs; the defaults are plain data.
    let (mut ss, mut map) = unsafe { ((*core).default_sample_spec, (*core).default_channel_map) };
    let (config, spec) = parse_args(&ma, &mut ss, &mut map)?;

    let description = cstring(&format!("Secure tunnel microphone from {}", config.server));
    let server = cstring(&config.server.to_string());
    let name = cstring(&config.source_name);
    let latency_usec = u64::from(config.latency_msec) * 1000;
    let frame = spec.frame_size() as usize;
    let max_block = MAX_AUDIO_CHUNK - MAX_AUDIO_CHUNK % frame.max(1);

    let u = Box::into_raw(Box::new(Userdata {
        core,
        module: m,
        source: ptr::null_mut(),
        rtpoll: ptr::null_mut(),
        poll_item: ptr::null_mut(),
        // SAFETY: pa_thread_mq is plain C data; all-zero is its "not yet
        // initialised" state and pa_thread_mq_init fills it before use.
        thread_mq: unsafe { std::mem::zeroed() },
        thread_mq_ready: false,
        thread: ptr::null_mut(),
        engine: RefCell::new(SourceEngine::new(config, spec)),
        max_block,
    }));
    // SAFETY: m is valid; teardown (pa__done or the error path below) frees u.
    unsafe { (*m).userdata = u.cast() };
    // SAFETY: u is the live Box we just leaked, only used on this thread until
    // the IO thread starts.
    let built = unsafe {
        build(
            u,
            m,
            &ma,
            (&ss, &map),
            &description,
            &server,
            &name,
            latency_usec,
        )
    };
    if let Err(e) = built {
        // SAFETY: m->userdata is u, partially built; teardown handles nulls.
        unsafe { done(m) };
        return Err(e);
    }
    Ok(())
}

/// Creates rtpoll, message queues, the source and the IO thread.
///
/// # Safety
/// `u` is the live userdata of `m`; main thread; the IO thread not started.
#[allow(clippy::too_many_arguments)]
unsafe fn build(
    u: *mut Userdata,
    m: *mut sys::pa_module,
    ma: &Modargs,
    (ss, map): (&sys::pa_sample_spec, &sys::pa_channel_map),
    description: &CStr,
    server: &CStr,
    name: &CStr,
    latency_usec: u64,
) -> Result<(), String> {
    // SAFETY: see the function contract; each call below receives pointers
    // that were just created by pulsecore or are fields of *u.
    unsafe {
        let ud = &mut *u;
        ud.rtpoll = sys::pa_rtpoll_new();
        if sys::pa_thread_mq_init(&mut ud.thread_mq, (*ud.core).mainloop, ud.rtpoll) < 0 {
            return Err("cannot create the IO thread's message queues".into());
        }
        ud.thread_mq_ready = true;
        ud.poll_item =
            sys::pa_rtpoll_item_new(ud.rtpoll, sys::pa_rtpoll_priority_PA_RTPOLL_NEVER, 1);
        let pfd = sys::pa_rtpoll_item_get_pollfd(ud.poll_item, ptr::null_mut());
        (*pfd).fd = -1;
        (*pfd).events = 0;

        let mut data: sys::pa_source_new_data = std::mem::zeroed();
        sys::pa_source_new_data_init(&mut data);
        data.driver = c"module-secure-tunnel-source".as_ptr();
        data.module = m;
        sys::pa_source_new_data_set_name(&mut data, name.as_ptr());
        sys::pa_source_new_data_set_sample_spec(&mut data, ss);
        sys::pa_source_new_data_set_channel_map(&mut data, map);
        sys::pa_proplist_sets(
            data.proplist,
            c"device.description".as_ptr(),
            description.as_ptr(),
        );
        sys::pa_proplist_sets(data.proplist, c"device.class".as_ptr(), c"sound".as_ptr());
        sys::pa_proplist_sets(
            data.proplist,
            c"secure_tunnel.server".as_ptr(),
            server.as_ptr(),
        );
        if !ma.merge_proplist(c"source_properties", data.proplist) {
            sys::pa_source_new_data_done(&mut data);
            return Err("invalid source_properties".into());
        }
        let flags = sys::pa_source_flags_PA_SOURCE_LATENCY | sys::pa_source_flags_PA_SOURCE_NETWORK;
        ud.source = sys::pa_source_new(ud.core, &mut data, flags);
        sys::pa_source_new_data_done(&mut data);
        if ud.source.is_null() {
            return Err(format!(
                "cannot create source {} (is the name already taken?)",
                name.to_string_lossy()
            ));
        }
        let source = ud.source;
        (*source).parent.process_msg = Some(source_process_msg);
        (*source).set_state_in_io_thread = Some(source_set_state_in_io_thread);
        (*source).userdata = u.cast();
        sys::pa_source_set_asyncmsgq(source, ud.thread_mq.inq);
        sys::pa_source_set_rtpoll(source, ud.rtpoll);
        sys::pa_source_set_fixed_latency(source, latency_usec);
        set_property(source, c"secure_tunnel.connected", "no");
        set_property(source, c"secure_tunnel.reconnects", "0");
        set_property(
            source,
            c"secure_tunnel.capture",
            MicState::Disconnected.as_str(),
        );

        ud.thread = sys::pa_thread_new(c"secure-tunnel-mic".as_ptr(), Some(thread_func), u.cast());
        if ud.thread.is_null() {
            return Err("cannot start the IO thread".into());
        }
        sys::pa_source_put(source);
    }
    Ok(())
}

/// `pa__done` and the error path of `init`: stops the IO thread and frees
/// everything, tolerating a partially built instance.
///
/// # Safety
/// `m` is valid; main thread.
pub(super) unsafe fn done(m: *mut sys::pa_module) {
    // SAFETY: m is valid per contract; userdata is null or our Box.
    unsafe {
        let u = (*m).userdata.cast::<Userdata>();
        if u.is_null() {
            return;
        }
        (*m).userdata = ptr::null_mut();
        let ud = &mut *u;
        if !ud.source.is_null() {
            sys::pa_source_unlink(ud.source);
        }
        if !ud.thread.is_null() {
            sys::pa_asyncmsgq_send(
                ud.thread_mq.inq,
                ptr::null_mut(),
                sys::PA_MESSAGE_SHUTDOWN,
                ptr::null(),
                0,
                ptr::null(),
            );
            sys::pa_thread_free(ud.thread);
        }
        // The IO thread has stopped: the engine is ours now.
        ud.engine.borrow_mut().shutdown("module unloaded");
        if ud.thread_mq_ready {
            sys::pa_thread_mq_done(&mut ud.thread_mq);
        }
        if !ud.source.is_null() {
            sys::pa_source_unref(ud.source);
        }
        if !ud.poll_item.is_null() {
            sys::pa_rtpoll_item_free(ud.poll_item);
        }
        if !ud.rtpoll.is_null() {
            sys::pa_rtpoll_free(ud.rtpoll);
        }
        drop(Box::from_raw(u));
    }
}

/// `pa__get_n_used`.
///
/// # Safety
/// `m` is valid; main thread.
pub(super) unsafe fn n_used(m: *mut sys::pa_module) -> c_int {
    // SAFETY: userdata is null or our Box; the source is live until done.
    unsafe {
        let u = (*m).userdata.cast::<Userdata>();
        if u.is_null() || (*u).source.is_null() {
            return 0;
        }
        c_int::try_from(sys::pa_source_linked_by((*u).source)).unwrap_or(c_int::MAX)
    }
}

fn now_usec() -> u64 {
    // SAFETY: pa_rtclock_now has no preconditions.
    unsafe { sys::pa_rtclock_now() }
}

/// Sets one property of the source's property list.
///
/// # Safety
/// Main thread; `source` is live.
unsafe fn set_property(source: *mut sys::pa_source, key: &CStr, value: &str) {
    let value = cstring(value);
    // SAFETY: per contract; the temporary proplist is created, used to
    // update the source (which copies it) and freed here.
    unsafe {
        let pl = sys::pa_proplist_new();
        sys::pa_proplist_sets(pl, key.as_ptr(), value.as_ptr());
        sys::pa_source_update_proplist(source, sys::pa_update_mode_PA_UPDATE_REPLACE, pl);
        sys::pa_proplist_free(pl);
    }
}

/// Posts one property change to the main thread.
///
/// # Safety
/// IO thread of `ud`.
unsafe fn post(ud: &Userdata, code: c_int, value: i64) {
    // SAFETY: the outq and the source are live while the IO thread runs; the
    // queue takes its own reference on the source, so the message stays
    // valid until the main thread handles it.
    unsafe {
        sys::pa_asyncmsgq_post(
            ud.thread_mq.outq,
            ptr::addr_of_mut!((*ud.source).parent),
            code,
            ptr::null(),
            value,
            ptr::null(),
            None,
        );
    }
}

/// Logs the engine's transitions and publishes them as properties.
///
/// # Safety
/// IO thread of `ud`.
unsafe fn report(ud: &Userdata, name: &str) {
    let events = ud.engine.borrow_mut().take_events();
    for event in events {
        match event {
            SourceEvent::Connected => {
                pa_log!(Info, "{name}: connected to host-playd");
                let reconnects = ud.engine.borrow().stats().reconnects;
                // SAFETY: IO thread (contract).
                unsafe {
                    post(ud, MSG_SET_CONNECTED, 1);
                    post(ud, MSG_SET_RECONNECTS, i64::from(reconnects));
                }
            }
            SourceEvent::ConnectFailed(e) => {
                pa_log!(Warn, "{name}: {e}; recording silence and retrying")
            }
            SourceEvent::Disconnected(e) => {
                pa_log!(
                    Warn,
                    "{name}: connection lost ({e}); recording silence and reconnecting"
                );
                // SAFETY: IO thread (contract).
                unsafe { post(ud, MSG_SET_CONNECTED, 0) };
            }
            SourceEvent::State(mic) => {
                pa_log!(Info, "{name}: microphone {}", mic.as_str());
                let index = MIC_STATES.iter().position(|m| *m == mic).unwrap_or(0);
                // SAFETY: IO thread (contract).
                unsafe { post(ud, MSG_SET_CAPTURE, index as i64) };
            }
        }
    }
}

/// Posts one block to the source.
///
/// # Safety
/// IO thread; `ud.source` is live and opened.
unsafe fn post_block(ud: &Userdata, block: &Block) {
    let len = match block {
        Block::Audio(a) => a.len(),
        Block::Silence(n) => *n,
    };
    if len == 0 {
        return;
    }
    // SAFETY: the mempool lives as long as the core; a new memblock of len
    // bytes is ours until unref; acquire pins its data until release; the
    // source copies (references) the chunk in pa_source_post.
    unsafe {
        let block_ptr = sys::pa_memblock_new((*ud.core).mempool, len);
        let base = sys::pa_memblock_acquire(block_ptr).cast::<u8>();
        let dst = std::slice::from_raw_parts_mut(base, len);
        match block {
            // Every format the tunnel carries has all-zero silence.
            Block::Silence(_) => dst.fill(0),
            Block::Audio(a) => dst.copy_from_slice(a),
        }
        sys::pa_memblock_release(block_ptr);
        let chunk = sys::pa_memchunk {
            memblock: block_ptr,
            index: 0,
            length: len,
        };
        sys::pa_source_post(ud.source, &chunk);
        sys::pa_memblock_unref(block_ptr);
    }
}

fn recording(state: sys::pa_source_state_t) -> bool {
    state == sys::pa_source_state_PA_SOURCE_RUNNING
}

/// One instance's IO thread: move bytes, post blocks, sleep in rtpoll.
///
/// # Safety
/// IO thread of `ud`; the source and rtpoll outlive the thread.
unsafe fn io_loop(ud: &Userdata) -> Result<(), String> {
    let name = ud.engine.borrow().source_name().to_owned();
    loop {
        let now = now_usec();
        // SAFETY: the source is live while the IO thread runs (contract).
        let state = unsafe { (*ud.source).thread_info.state };
        ud.engine.borrow_mut().set_recording(recording(state), now);
        ud.engine.borrow_mut().poll_io(now);
        loop {
            let block = ud.engine.borrow_mut().next_block(now, ud.max_block);
            let Some(block) = block else { break };
            // Only a running source has readers; otherwise the block is
            // dropped (the engine asks nothing of a stopped source).
            if recording(state) {
                // SAFETY: IO thread, source live and opened.
                unsafe { post_block(ud, &block) };
            }
        }
        // SAFETY: IO thread of ud.
        unsafe { report(ud, &name) };

        let (interest, wake) = {
            let engine = ud.engine.borrow();
            (engine.poll_interest(), engine.next_wakeup(now_usec()))
        };
        // SAFETY: poll_item and rtpoll were created in build() and live until
        // teardown, after this thread has ended; the item has one pollfd.
        let ret = unsafe { glue::io_thread::wait(ud.rtpoll, ud.poll_item, interest, wake) };
        if ret < 0 {
            return Err("rtpoll failed".into());
        }
        if ret == 0 {
            return Ok(());
        }
    }
}

unsafe extern "C" fn thread_func(userdata: *mut c_void) {
    let u = userdata.cast::<Userdata>();
    // SAFETY: userdata is the instance's Box, alive until done() has joined
    // this thread; thread_mq was initialised before the thread started.
    unsafe { sys::pa_thread_mq_install(&mut (*u).thread_mq) };
    // SAFETY: core is valid while the module is loaded; this is its IO thread.
    unsafe { glue::io_thread::make_realtime((*u).core) };
    // SAFETY: as above; only this thread uses the engine now.
    let outcome = no_unwind("the IO thread", Err("panic".to_owned()), || unsafe {
        io_loop(&*u)
    });
    if let Err(e) = outcome {
        pa_log!(Error, "IO thread failed: {e}; unloading");
        // SAFETY: core, module and the queues are valid until done() has
        // joined this thread, which waits for the shutdown message.
        unsafe {
            glue::io_thread::unload_and_wait((*u).core, (*u).module, &mut (*u).thread_mq);
        }
    }
}

/// The userdata of a source we created.
///
/// # Safety
/// `s` is one of our sources, whose userdata is set before it is linked.
unsafe fn userdata<'a>(s: *mut sys::pa_source) -> &'a Userdata {
    // SAFETY: per contract.
    unsafe { &*(*s).userdata.cast::<Userdata>() }
}

unsafe extern "C" fn source_process_msg(
    o: *mut sys::pa_msgobject,
    code: c_int,
    data: *mut c_void,
    offset: i64,
    chunk: *mut sys::pa_memchunk,
) -> c_int {
    no_unwind("source_process_msg", -1, || {
        if code == sys::pa_source_message_PA_SOURCE_MESSAGE_GET_LATENCY as c_int {
            // SAFETY: o is our source (pa_source derives from pa_msgobject);
            // for GET_LATENCY, data points to an int64_t to fill. IO thread,
            // possibly inside pa_source_post: try_borrow avoids a re-entrant
            // borrow (then 0 is given).
            unsafe {
                let ud = userdata(o.cast());
                let latency = ud
                    .engine
                    .try_borrow()
                    .map(|e| e.latency_usec(now_usec()))
                    .unwrap_or(0);
                *data.cast::<i64>() = i64::try_from(latency).unwrap_or(i64::MAX);
            }
            return 0;
        }
        let key = match code {
            MSG_SET_CONNECTED => Some(c"secure_tunnel.connected"),
            MSG_SET_RECONNECTS => Some(c"secure_tunnel.reconnects"),
            MSG_SET_CAPTURE => Some(c"secure_tunnel.capture"),
            _ => None,
        };
        if let Some(key) = key {
            let value = match code {
                MSG_SET_CONNECTED if offset != 0 => "yes".to_owned(),
                MSG_SET_CONNECTED => "no".to_owned(),
                MSG_SET_CAPTURE => MIC_STATES
                    .get(usize::try_from(offset).unwrap_or(0))
                    .copied()
                    .unwrap_or(MicState::Disconnected)
                    .as_str()
                    .to_owned(),
                _ => offset.to_string(),
            };
            // SAFETY: these codes are only posted to the outq, which the
            // main loop dispatches on the main thread; o is our source, kept
            // alive by the message's reference. An unlinked source is left be.
            unsafe {
                let source = o.cast::<sys::pa_source>();
                if sys::PA_SOURCE_IS_LINKED((*source).state) {
                    set_property(source, key, &value);
                }
            }
            return 0;
        }
        // SAFETY: everything else is the generic source's business.
        unsafe { sys::pa_source_process_msg(o, code, data, offset, chunk) }
    })
}

unsafe extern "C" fn source_set_state_in_io_thread(
    s: *mut sys::pa_source,
    new_state: sys::pa_source_state_t,
    _new_suspend_cause: sys::pa_suspend_cause_t,
) -> c_int {
    no_unwind("set_state_in_io_thread", -1, || {
        // SAFETY: s is our source; this runs on its IO thread.
        let ud = unsafe { userdata(s) };
        if let Ok(mut engine) = ud.engine.try_borrow_mut() {
            engine.set_recording(recording(new_state), now_usec());
        }
        0
    })
}
