//! Safe wrappers shared by the project's PulseAudio modules (the sink and
//! the source): each module keeps only its own object's FFI.

use std::ffi::CStr;

use secure_tunnel_protocol::{SampleFormat, StreamSpec};

use crate as sys;

pub mod entry;
pub mod io_thread;
pub mod log;
pub mod modargs;

/// Runs `f`, turning a panic into `fallback` (and a line in PulseAudio's log
/// attributed to `module`) so that no unwind ever crosses an `extern "C"`
/// boundary into PulseAudio.
pub fn no_unwind<T>(module: &CStr, what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            log::write(
                module,
                log::Level::Error,
                &format!("internal error in {what}: {msg}"),
            );
            fallback
        }
    }
}

/// The tunnel's name for a PulseAudio sample format, or why it cannot carry it.
pub fn sample_format(format: sys::pa_sample_format_t) -> Result<SampleFormat, String> {
    match format {
        sys::pa_sample_format_PA_SAMPLE_S16LE => Ok(SampleFormat::S16Le),
        sys::pa_sample_format_PA_SAMPLE_S32LE => Ok(SampleFormat::S32Le),
        sys::pa_sample_format_PA_SAMPLE_FLOAT32LE => Ok(SampleFormat::F32Le),
        other => {
            // SAFETY: pa_sample_format_to_string accepts any value and returns
            // a static string or NULL.
            let name = unsafe { sys::pa_sample_format_to_string(other) };
            let name = if name.is_null() {
                format!("#{other}")
            } else {
                // SAFETY: non-null results are static NUL-terminated strings.
                unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned()
            };
            Err(format!(
                "invalid format={name}: the tunnel carries s16le, s32le or float32le"
            ))
        }
    }
}

/// Reads format, rate, channels and channel_map from the arguments (over the
/// daemon's defaults already in `ss`/`map`) and converts them to the
/// protocol's stream specification; the error names what was given.
pub fn stream_spec(
    ma: &modargs::Modargs,
    ss: &mut sys::pa_sample_spec,
    map: &mut sys::pa_channel_map,
) -> Result<StreamSpec, String> {
    if !ma.sample_spec_and_map(ss, map) {
        let given: Vec<String> = [c"format", c"rate", c"channels", c"channel_map"]
            .iter()
            .filter_map(|k| ma.get(k).map(|v| format!("{}={v}", k.to_string_lossy())))
            .collect();
        return Err(format!(
            "invalid sample specification or channel map ({}); formats: s16le, s32le, \
             float32le; rate 8000..192000; 1..8 channels matching channel_map",
            given.join(" ")
        ));
    }
    let format = sample_format(ss.format)?;
    let channels = usize::from(ss.channels).min(map.map.len());
    let spec = StreamSpec {
        format,
        rate: ss.rate,
        channel_map: map.map[..channels]
            .iter()
            .map(|&p| u8::try_from(p).unwrap_or(u8::MAX))
            .collect(),
    };
    spec.validate()
        .map_err(|e| format!("unsupported sample specification: {e}"))?;
    Ok(spec)
}
