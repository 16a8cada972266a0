//! The sink itself: creation and teardown on PulseAudio's main thread, the IO
//! thread's loop, and the callbacks PulseAudio calls on that thread. The
//! decisions are the engine's (safe Rust); this file only moves data and
//! calls between it and pulsecore.

use std::cell::RefCell;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;

use pulse_module_sys as sys;
use secure_tunnel_protocol::{StreamSpec, MAX_AUDIO_CHUNK};

use super::{no_unwind, pa_log};
use pulse_module_sys::glue;
use pulse_module_sys::glue::modargs::{cstring, Modargs};
use secure_tunnel_guest::config::{RawArgs, TunnelConfig};
use secure_tunnel_guest::engine::{Engine, Event, Stats};
use secure_tunnel_guest::session::{Activity, REWIND_GUARD_USEC};

const VALID_ARGS: &[&CStr] = &[
    c"server",
    c"sink_name",
    c"sink_properties",
    c"format",
    c"rate",
    c"channels",
    c"channel_map",
    c"latency_msec",
    c"reconnect_interval_msec",
    c"min_latency_msec",
    c"max_latency_msec",
];

/// Messages the IO thread posts to the sink on the main thread, which alone
/// may change the sink's property list. The value travels in `offset`.
const MSG_SET_CONNECTED: c_int = sys::pa_sink_message_PA_SINK_MESSAGE_MAX as c_int;
const MSG_SET_RECONNECTS: c_int = MSG_SET_CONNECTED + 1;
const MSG_SET_UNDERRUNS: c_int = MSG_SET_CONNECTED + 2;

/// Underrun log lines are written at most this often.
const UNDERRUN_LOG_INTERVAL_USEC: u64 = 10_000_000;

/// Everything one loaded instance owns. Lives in a `Box` whose pointer is
/// stored in `pa_module.userdata` and `pa_sink.userdata`.
///
/// Threading: the main thread writes the pointer fields during `init` and
/// `teardown` only, while the IO thread is not running. Between the two the
/// IO thread alone touches `engine` (the sink callbacks below run on it).
struct Userdata {
    core: *mut sys::pa_core,
    module: *mut sys::pa_module,
    sink: *mut sys::pa_sink,
    rtpoll: *mut sys::pa_rtpoll,
    poll_item: *mut sys::pa_rtpoll_item,
    thread_mq: sys::pa_thread_mq,
    thread_mq_ready: bool,
    thread: *mut sys::pa_thread,
    engine: RefCell<Engine>,
    max_render: usize,
}

/// Reads and validates the arguments: everything that can be wrong is found
/// here, before anything is created.
fn parse_args(
    ma: &Modargs,
    ss: &mut sys::pa_sample_spec,
    map: &mut sys::pa_channel_map,
) -> Result<(TunnelConfig, StreamSpec), String> {
    let spec = glue::stream_spec(ma, ss, map)?;
    let (server, sink_name, latency, reconnect, min_latency, max_latency) = (
        ma.get(c"server"),
        ma.get(c"sink_name"),
        ma.get(c"latency_msec"),
        ma.get(c"reconnect_interval_msec"),
        ma.get(c"min_latency_msec"),
        ma.get(c"max_latency_msec"),
    );
    let config = TunnelConfig::from_args(RawArgs {
        server: server.as_deref(),
        sink_name: sink_name.as_deref(),
        latency_msec: latency.as_deref(),
        reconnect_interval_msec: reconnect.as_deref(),
        min_latency_msec: min_latency.as_deref(),
        max_latency_msec: max_latency.as_deref(),
    })
    .map_err(|e| e.to_string())?;
    Ok((config, spec))
}

/// `pa__init`: builds the sink and starts its IO thread.
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

    let description = cstring(&format!("Secure tunnel to {}", config.server));
    let server = cstring(&config.server.to_string());
    let name = cstring(&config.sink_name);
    let target_usec = u64::from(config.latency_msec) * 1000;
    let max_request = spec
        .usec_to_bytes(target_usec)
        .max(u64::from(spec.frame_size()));
    let max_rewind = spec.usec_to_bytes(target_usec.saturating_sub(REWIND_GUARD_USEC));
    let frame = spec.frame_size() as usize;
    let max_render = MAX_AUDIO_CHUNK - MAX_AUDIO_CHUNK % frame.max(1);

    let u = Box::into_raw(Box::new(Userdata {
        core,
        module: m,
        sink: ptr::null_mut(),
        rtpoll: ptr::null_mut(),
        poll_item: ptr::null_mut(),
        // SAFETY: pa_thread_mq is plain C data; all-zero is its "not yet
        // initialised" state and pa_thread_mq_init fills it before use.
        thread_mq: unsafe { std::mem::zeroed() },
        thread_mq_ready: false,
        thread: ptr::null_mut(),
        engine: RefCell::new(Engine::new(config, spec)),
        max_render,
    }));
    // SAFETY: m is valid; teardown (pa__done or the error path below) frees u.
    unsafe { (*m).userdata = u.cast() };

    // SAFETY: u is the live Box we just leaked, only used on this thread until
    // the IO thread starts; every pulsecore call gets pointers it created.
    let built = unsafe {
        build(
            u,
            m,
            &ma,
            &ss,
            &map,
            &description,
            &server,
            &name,
            max_request,
            max_rewind,
        )
    };
    if let Err(e) = built {
        // SAFETY: m->userdata is u, partially built; teardown handles nulls.
        unsafe { done(m) };
        return Err(e);
    }
    Ok(())
}

/// Creates rtpoll, message queues, the sink and the IO thread.
///
/// # Safety
/// `u` is the live userdata of `m`; main thread; the IO thread not started.
#[allow(clippy::too_many_arguments)]
unsafe fn build(
    u: *mut Userdata,
    m: *mut sys::pa_module,
    ma: &Modargs,
    ss: &sys::pa_sample_spec,
    map: &sys::pa_channel_map,
    description: &CStr,
    server: &CStr,
    name: &CStr,
    max_request: u64,
    max_rewind: u64,
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

        let mut data: sys::pa_sink_new_data = std::mem::zeroed();
        sys::pa_sink_new_data_init(&mut data);
        data.driver = c"module-secure-tunnel-sink".as_ptr();
        data.module = m;
        sys::pa_sink_new_data_set_name(&mut data, name.as_ptr());
        sys::pa_sink_new_data_set_sample_spec(&mut data, ss);
        sys::pa_sink_new_data_set_channel_map(&mut data, map);
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
        if !ma.merge_proplist(c"sink_properties", data.proplist) {
            sys::pa_sink_new_data_done(&mut data);
            return Err("invalid sink_properties".into());
        }
        let flags = sys::pa_sink_flags_PA_SINK_LATENCY
            | sys::pa_sink_flags_PA_SINK_DYNAMIC_LATENCY
            | sys::pa_sink_flags_PA_SINK_NETWORK;
        ud.sink = sys::pa_sink_new(ud.core, &mut data, flags);
        sys::pa_sink_new_data_done(&mut data);
        if ud.sink.is_null() {
            return Err(format!(
                "cannot create sink {} (is the name already taken?)",
                name.to_string_lossy()
            ));
        }
        let sink = ud.sink;
        (*sink).parent.process_msg = Some(sink_process_msg);
        (*sink).set_state_in_io_thread = Some(sink_set_state_in_io_thread);
        (*sink).update_requested_latency = Some(sink_update_requested_latency);
        (*sink).userdata = u.cast();
        sys::pa_sink_set_asyncmsgq(sink, ud.thread_mq.inq);
        sys::pa_sink_set_rtpoll(sink, ud.rtpoll);
        let (min_latency, max_latency) = ud.engine.borrow().latency_range_usec();
        sys::pa_sink_set_latency_range(sink, min_latency, max_latency);
        set_property(sink, c"secure_tunnel.connected", "no");
        set_property(sink, c"secure_tunnel.reconnects", "0");
        set_property(sink, c"secure_tunnel.underruns", "0");
        sys::pa_sink_set_max_request(sink, usize::try_from(max_request).unwrap_or(usize::MAX));
        // The inputs keep as much history as a rewind can take back from
        // the host: its buffer (latency_msec) less the guard the engine
        // always leaves there; none at all when that is nothing, so a short
        // latency_msec costs neither the history nor the monitor's delay
        // queue (docs/design.md, "Rewinds").
        sys::pa_sink_set_max_rewind(sink, usize::try_from(max_rewind).unwrap_or(usize::MAX));

        ud.thread = sys::pa_thread_new(c"secure-tunnel".as_ptr(), Some(thread_func), u.cast());
        if ud.thread.is_null() {
            return Err("cannot start the IO thread".into());
        }
        sys::pa_sink_put(sink);
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
        if !ud.sink.is_null() {
            sys::pa_sink_unlink(ud.sink);
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
        if !ud.sink.is_null() {
            sys::pa_sink_unref(ud.sink);
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
    // SAFETY: userdata is null or our Box; the sink pointer is live until done.
    unsafe {
        let u = (*m).userdata.cast::<Userdata>();
        if u.is_null() || (*u).sink.is_null() {
            return 0;
        }
        c_int::try_from(sys::pa_sink_linked_by((*u).sink)).unwrap_or(c_int::MAX)
    }
}

fn now_usec() -> u64 {
    // SAFETY: pa_rtclock_now has no preconditions.
    unsafe { sys::pa_rtclock_now() }
}

/// The tunnel's view of a sink state.
fn activity(state: sys::pa_sink_state_t) -> Activity {
    match state {
        sys::pa_sink_state_PA_SINK_RUNNING => Activity::Running,
        sys::pa_sink_state_PA_SINK_IDLE => Activity::Idle,
        _ => Activity::Suspended,
    }
}

/// Sets one property of the sink's property list.
///
/// # Safety
/// Main thread; `sink` is live.
unsafe fn set_property(sink: *mut sys::pa_sink, key: &CStr, value: &str) {
    let value = cstring(value);
    // SAFETY: per contract; the temporary proplist is created, used to
    // update the sink (which copies it) and freed here.
    unsafe {
        let pl = sys::pa_proplist_new();
        sys::pa_proplist_sets(pl, key.as_ptr(), value.as_ptr());
        sys::pa_sink_update_proplist(sink, sys::pa_update_mode_PA_UPDATE_REPLACE, pl);
        sys::pa_proplist_free(pl);
    }
}

/// What the IO thread remembers between wake-ups for logging and publishing.
#[derive(Debug, Default)]
struct Reporter {
    published: Stats,
    last_underrun_log: Option<u64>,
    unlogged_underruns: u32,
}

impl Reporter {
    fn log_events(&mut self, engine: &RefCell<Engine>, sink_name: &str, now: u64) {
        let events = engine.borrow_mut().take_events();
        for event in events {
            match event {
                Event::Connected {
                    buffer_bytes,
                    rewinds,
                } => pa_log!(
                    Info,
                    "{sink_name}: connected to host-playd (host buffer {buffer_bytes} bytes, \
                     rewinds {})",
                    if rewinds { "on" } else { "off" }
                ),
                Event::NoRewinds => pa_log!(
                    Info,
                    "{sink_name}: host-playd predates rewinds (protocol 3); using protocol 1"
                ),
                Event::ConnectFailed(e) => {
                    pa_log!(Warn, "{sink_name}: {e}; playing into the void and retrying")
                }
                Event::Disconnected(e) => pa_log!(
                    Warn,
                    "{sink_name}: connection lost ({e}); playing into the void and reconnecting"
                ),
                Event::Underruns { new } => self.unlogged_underruns += new,
            }
        }
        let due = self
            .last_underrun_log
            .is_none_or(|t| now.saturating_sub(t) >= UNDERRUN_LOG_INTERVAL_USEC);
        if self.unlogged_underruns > 0 && due {
            let total = engine.borrow().stats().underruns;
            pa_log!(
                Warn,
                "{sink_name}: host-playd ran out of audio {} time(s) (total {total}); \
                 consider a larger latency_msec",
                self.unlogged_underruns
            );
            self.unlogged_underruns = 0;
            self.last_underrun_log = Some(now);
        }
    }

    /// Posts changed counters to the main thread, which updates the sink's
    /// properties (`pactl list sinks` shows them).
    ///
    /// # Safety
    /// IO thread of `ud`.
    unsafe fn publish(&mut self, ud: &Userdata) {
        let stats = ud.engine.borrow().stats();
        let changes = [
            (
                MSG_SET_CONNECTED,
                stats.connected != self.published.connected,
                i64::from(stats.connected),
            ),
            (
                MSG_SET_RECONNECTS,
                stats.reconnects != self.published.reconnects,
                i64::from(stats.reconnects),
            ),
            (
                MSG_SET_UNDERRUNS,
                stats.underruns != self.published.underruns,
                i64::from(stats.underruns),
            ),
        ];
        for (code, changed, value) in changes {
            if changed {
                // SAFETY: the outq and the sink are live while the IO thread
                // runs; the queue takes its own reference on the sink, so
                // the message stays valid until the main thread handles it.
                unsafe {
                    sys::pa_asyncmsgq_post(
                        ud.thread_mq.outq,
                        ptr::addr_of_mut!((*ud.sink).parent),
                        code,
                        ptr::null(),
                        value,
                        ptr::null(),
                        None,
                    );
                }
            }
        }
        self.published = stats;
    }
}

/// Renders `budget` bytes from the sink's inputs into the engine.
///
/// # Safety
/// IO thread; `ud.sink` is live and opened.
unsafe fn render(ud: &Userdata, mut budget: usize, now: u64) {
    while budget > 0 {
        let n = budget.min(ud.max_render);
        // SAFETY: a zeroed memchunk is the empty chunk pa_sink_render fills;
        // the sink is live per contract and n is a positive multiple of the
        // frame size.
        let mut chunk: sys::pa_memchunk = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { sys::pa_sink_render(ud.sink, n, &mut chunk) };
        if chunk.memblock.is_null() || chunk.length == 0 {
            break;
        }
        // SAFETY: pa_sink_render returned a referenced memblock holding at
        // least index + length bytes; acquire pins its data until release.
        unsafe {
            let base = sys::pa_memblock_acquire(chunk.memblock).cast::<u8>();
            let data = std::slice::from_raw_parts(base.add(chunk.index), chunk.length);
            // consume() never calls back into PulseAudio, so no re-entrant
            // borrow is possible here.
            ud.engine.borrow_mut().consume(data, now);
            sys::pa_memblock_release(chunk.memblock);
            sys::pa_memblock_unref(chunk.memblock);
        }
        budget -= chunk.length.min(budget);
    }
}

/// One instance's IO thread: render, move bytes, sleep in rtpoll.
///
/// # Safety
/// IO thread of `ud`; the sink and rtpoll outlive the thread.
unsafe fn io_loop(ud: &Userdata) -> Result<(), String> {
    let sink_name = ud.engine.borrow().sink_name().to_owned();
    let mut reporter = Reporter::default();
    loop {
        let now = now_usec();
        // SAFETY: the sink is live while the IO thread runs (contract).
        let activity = activity(unsafe { (*ud.sink).thread_info.state });
        let opened = activity != Activity::Suspended;
        ud.engine.borrow_mut().set_activity(activity, now);
        ud.engine.borrow_mut().poll_io(now);
        if opened {
            // SAFETY: as above; rewinds are processed before rendering, as
            // every sink must. The engine withdraws from the host what it
            // surely has not played (a Rewind queued before the audio
            // rendered next) and the inputs rewind exactly that much.
            unsafe {
                if (*ud.sink).thread_info.rewind_requested {
                    let requested = (*ud.sink).thread_info.rewind_nbytes as u64;
                    let done = ud.engine.borrow_mut().rewind(requested, now);
                    sys::pa_sink_process_rewind(ud.sink, usize::try_from(done).unwrap_or(0));
                }
            }
            let budget = ud.engine.borrow_mut().render_budget(now);
            // SAFETY: IO thread, sink live and opened.
            unsafe { render(ud, budget, now) };
            ud.engine.borrow_mut().flush(now);
        }
        reporter.log_events(&ud.engine, &sink_name, now);
        // SAFETY: IO thread of ud.
        unsafe { reporter.publish(ud) };

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

/// The userdata of a sink we created.
///
/// # Safety
/// `s` is one of our sinks, whose userdata is set before it is linked.
unsafe fn userdata<'a>(s: *mut sys::pa_sink) -> &'a Userdata {
    // SAFETY: per contract.
    unsafe { &*(*s).userdata.cast::<Userdata>() }
}

unsafe extern "C" fn sink_process_msg(
    o: *mut sys::pa_msgobject,
    code: c_int,
    data: *mut c_void,
    offset: i64,
    chunk: *mut sys::pa_memchunk,
) -> c_int {
    no_unwind("sink_process_msg", -1, || {
        if code == sys::pa_sink_message_PA_SINK_MESSAGE_GET_LATENCY as c_int {
            // SAFETY: o is our sink (pa_sink derives from pa_msgobject);
            // for GET_LATENCY, data points to an int64_t to fill. This runs
            // on the IO thread, possibly inside render(): try_borrow avoids a
            // re-entrant borrow (then the previous answer, 0, is given).
            unsafe {
                let ud = userdata(o.cast());
                let latency = ud
                    .engine
                    .try_borrow_mut()
                    .map(|mut e| e.latency_usec(now_usec()))
                    .unwrap_or(0);
                *data.cast::<i64>() = latency;
            }
            return 0;
        }
        let key = match code {
            MSG_SET_CONNECTED => Some(c"secure_tunnel.connected"),
            MSG_SET_RECONNECTS => Some(c"secure_tunnel.reconnects"),
            MSG_SET_UNDERRUNS => Some(c"secure_tunnel.underruns"),
            _ => None,
        };
        if let Some(key) = key {
            let value = match code {
                MSG_SET_CONNECTED if offset != 0 => "yes".to_owned(),
                MSG_SET_CONNECTED => "no".to_owned(),
                _ => offset.to_string(),
            };
            // SAFETY: these codes are only posted to the outq, which the
            // main loop dispatches on the main thread; o is our sink, kept
            // alive by the message's reference. An unlinked sink is left be.
            unsafe {
                let sink = o.cast::<sys::pa_sink>();
                if sys::PA_SINK_IS_LINKED((*sink).state) {
                    set_property(sink, key, &value);
                }
            }
            return 0;
        }
        // SAFETY: everything else is the generic sink's business.
        unsafe { sys::pa_sink_process_msg(o, code, data, offset, chunk) }
    })
}

unsafe extern "C" fn sink_set_state_in_io_thread(
    s: *mut sys::pa_sink,
    new_state: sys::pa_sink_state_t,
    _new_suspend_cause: sys::pa_suspend_cause_t,
) -> c_int {
    no_unwind("set_state_in_io_thread", -1, || {
        // SAFETY: s is our sink; this runs on its IO thread.
        let ud = unsafe { userdata(s) };
        if let Ok(mut engine) = ud.engine.try_borrow_mut() {
            engine.set_activity(activity(new_state), now_usec());
        }
        0
    })
}

unsafe extern "C" fn sink_update_requested_latency(s: *mut sys::pa_sink) {
    no_unwind("update_requested_latency", (), || {
        // SAFETY: s is our sink; this runs on its IO thread.
        let (ud, requested) = unsafe {
            (
                userdata(s),
                sys::pa_sink_get_requested_latency_within_thread(s),
            )
        };
        let requested = (requested != u64::MAX).then_some(requested);
        if let Ok(mut engine) = ud.engine.try_borrow_mut() {
            engine.set_requested_latency(requested);
        }
    })
}
