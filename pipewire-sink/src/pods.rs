//! The SPA pods the node offers: its one audio format and its Latency.

use pipewire::spa;
use secure_tunnel_protocol::{SampleFormat, StreamSpec};
use spa::param::audio::{AudioFormat, AudioInfoRaw};
use spa::pod::serialize::PodSerializer;
use spa::pod::{Object, Property, PropertyFlags, Value};
use spa::sys;

/// PulseAudio's channel position (the protocol's numbering) as SPA's.
fn spa_position(pa: u8) -> u32 {
    match pa {
        0 => sys::SPA_AUDIO_CHANNEL_MONO,
        1 => sys::SPA_AUDIO_CHANNEL_FL,
        2 => sys::SPA_AUDIO_CHANNEL_FR,
        3 => sys::SPA_AUDIO_CHANNEL_FC,
        4 => sys::SPA_AUDIO_CHANNEL_RC,
        5 => sys::SPA_AUDIO_CHANNEL_RL,
        6 => sys::SPA_AUDIO_CHANNEL_RR,
        7 => sys::SPA_AUDIO_CHANNEL_LFE,
        10 => sys::SPA_AUDIO_CHANNEL_SL,
        11 => sys::SPA_AUDIO_CHANNEL_SR,
        n => sys::SPA_AUDIO_CHANNEL_AUX0 + u32::from(n),
    }
}

fn serialize(value: &Value) -> Vec<u8> {
    // Serializing into a Vec cannot fail for these small, well-formed pods;
    // an empty pod list is the harmless fallback.
    PodSerializer::serialize(std::io::Cursor::new(Vec::new()), value)
        .map(|(cursor, _)| cursor.into_inner())
        .unwrap_or_default()
}

/// The EnumFormat the stream offers: exactly the host stream's format, so
/// PipeWire converts (if at all) before the node and the bytes go to the
/// host untouched.
pub fn format(spec: &StreamSpec) -> Vec<u8> {
    let mut info = AudioInfoRaw::new();
    info.set_format(match spec.format {
        SampleFormat::S16Le => AudioFormat::S16LE,
        SampleFormat::S32Le => AudioFormat::S32LE,
        SampleFormat::F32Le => AudioFormat::F32LE,
    });
    info.set_rate(spec.rate);
    info.set_channels(u32::from(spec.channels()));
    let mut position = [0u32; 64];
    for (slot, &pa) in position.iter_mut().zip(&spec.channel_map) {
        *slot = spa_position(pa);
    }
    info.set_position(position);
    serialize(&Value::Object(Object {
        type_: sys::SPA_TYPE_OBJECT_Format,
        id: sys::SPA_PARAM_EnumFormat,
        properties: info.into(),
    }))
}

fn prop(key: u32, value: Value) -> Property {
    Property {
        key,
        flags: PropertyFlags::empty(),
        value,
    }
}

/// The ProcessLatency param, `nsec`.
fn process_latency(nsec: u64) -> Vec<u8> {
    let ns = i64::try_from(nsec).unwrap_or(i64::MAX);
    serialize(&Value::Object(Object {
        type_: sys::SPA_TYPE_OBJECT_ParamProcessLatency,
        id: sys::SPA_PARAM_ProcessLatency,
        properties: vec![
            prop(sys::SPA_PARAM_PROCESS_LATENCY_quantum, Value::Float(0.0)),
            prop(sys::SPA_PARAM_PROCESS_LATENCY_rate, Value::Int(0)),
            prop(sys::SPA_PARAM_PROCESS_LATENCY_ns, Value::Long(ns)),
        ],
    }))
}

/// A Latency param of `direction`: input for a sink's port (from now to
/// heard), output for a source's (from captured to now).
pub fn latency_in(direction: u32, nsec: u64) -> Vec<u8> {
    let ns = i64::try_from(nsec).unwrap_or(i64::MAX);
    serialize(&Value::Object(Object {
        type_: sys::SPA_TYPE_OBJECT_ParamLatency,
        id: sys::SPA_PARAM_Latency,
        properties: vec![
            prop(
                sys::SPA_PARAM_LATENCY_direction,
                Value::Id(spa::utils::Id(direction)),
            ),
            prop(sys::SPA_PARAM_LATENCY_minQuantum, Value::Float(0.0)),
            prop(sys::SPA_PARAM_LATENCY_maxQuantum, Value::Float(0.0)),
            prop(sys::SPA_PARAM_LATENCY_minRate, Value::Int(0)),
            prop(sys::SPA_PARAM_LATENCY_maxRate, Value::Int(0)),
            prop(sys::SPA_PARAM_LATENCY_minNs, Value::Long(ns)),
            prop(sys::SPA_PARAM_LATENCY_maxNs, Value::Long(ns)),
        ],
    }))
}

/// Publishes `nsec` as the port's Latency (of `direction`: input for the
/// sink, output for the source) and a ProcessLatency of 0 (from PipeWire
/// 1.3.81 on a stream's process latency is added to its Latency, which
/// already holds it all). `what` names the node in the warning on failure.
pub fn publish_latency(stream: &pipewire::stream::Stream, direction: u32, nsec: u64, what: &str) {
    let lat = latency_in(direction, nsec);
    let plat = process_latency(0);
    let pods = [
        spa::pod::Pod::from_bytes(&lat),
        spa::pod::Pod::from_bytes(&plat),
    ];
    let mut params: Vec<&spa::pod::Pod> = pods.into_iter().flatten().collect();
    if let Err(e) = stream.update_params(&mut params) {
        log::warn!("cannot update the {what}'s latency: {e}");
    }
}

/// Connects `stream` offering exactly `spec`'s format (the one EnumFormat
/// the node takes), in `direction` with `flags`.
pub fn connect(
    stream: &pipewire::stream::Stream,
    spec: &StreamSpec,
    direction: spa::utils::Direction,
    flags: pipewire::stream::StreamFlags,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let format = format(spec);
    let mut params = [spa::pod::Pod::from_bytes(&format).context("format pod")?];
    stream
        .connect(direction, None, flags, &mut params)
        .context("connecting the stream")?;
    Ok(())
}
