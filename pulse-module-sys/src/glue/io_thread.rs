//! What every module's IO thread does the same way: real-time priority,
//! sleeping in rtpoll on one socket and a timer, and asking the main thread
//! to unload the module when the thread fails.

use std::ffi::c_int;
use std::ptr;

use crate as sys;

/// Real-time priority for the calling IO thread when the daemon has it, as
/// every sink and source IO thread does (failure is harmless and logged by
/// PulseAudio).
///
/// # Safety
/// `core` is the live core; called on the module's IO thread.
pub unsafe fn make_realtime(core: *mut sys::pa_core) {
    // SAFETY: per contract; the call only changes this thread's scheduling.
    unsafe {
        if (*core).realtime_scheduling() {
            sys::pa_thread_make_realtime((*core).realtime_priority);
        }
    }
}

/// Sets the one pollfd of `item` to `interest` (a socket, and whether to
/// wait for writing too; `None`: no socket), the timer to `wake` (absolute,
/// usec) and runs rtpoll once: PulseAudio's `pa_rtpoll_run` result (< 0
/// failed, 0 asked to quit).
///
/// # Safety
/// IO thread; `rtpoll` and `item` (created with one pollfd) are live.
pub unsafe fn wait(
    rtpoll: *mut sys::pa_rtpoll,
    item: *mut sys::pa_rtpoll_item,
    interest: Option<(c_int, bool)>,
    wake: u64,
) -> c_int {
    // SAFETY: per contract; the pollfd array has exactly one entry.
    unsafe {
        let pfd = sys::pa_rtpoll_item_get_pollfd(item, ptr::null_mut());
        match interest {
            Some((fd, want_write)) => {
                (*pfd).fd = fd;
                (*pfd).events = libc::POLLIN | if want_write { libc::POLLOUT } else { 0 };
            }
            None => {
                (*pfd).fd = -1;
                (*pfd).events = 0;
            }
        }
        (*pfd).revents = 0;
        sys::pa_rtpoll_set_timer_absolute(rtpoll, wake);
        sys::pa_rtpoll_run(rtpoll)
    }
}

/// After the IO thread failed: asks the main thread to unload `module`, then
/// waits for its shutdown message, as every sink module does.
///
/// # Safety
/// IO thread of `module`; `core`, `module` and `thread_mq`'s queues are live.
pub unsafe fn unload_and_wait(
    core: *mut sys::pa_core,
    module: *mut sys::pa_module,
    thread_mq: *mut sys::pa_thread_mq,
) {
    // SAFETY: per contract; the core is a pa_msgobject by C inheritance
    // (its first field).
    unsafe {
        sys::pa_asyncmsgq_post(
            (*thread_mq).outq,
            ptr::addr_of_mut!((*core).parent),
            sys::PA_CORE_MESSAGE_UNLOAD_MODULE as c_int,
            module.cast(),
            0,
            ptr::null(),
            None,
        );
        sys::pa_asyncmsgq_wait_for((*thread_mq).inq, sys::PA_MESSAGE_SHUTDOWN);
    }
}
