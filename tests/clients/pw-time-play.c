/*
 * pw-time-play: a native PipeWire playback client for secure-tunnel's tests,
 * the PipeWire counterpart of `pacat -v`. It plays raw s16le stereo 48 kHz
 * from stdin into the node named by argv[1] and prints, about every 20 ms,
 * the stream clock as pw_stream_get_time_n() gives it to any native client:
 *
 *     Time: <seconds of the stream heard at this instant> sec; Latency: <usec> usec
 *
 * in pacat's format, so that the same test code reads both. Heard position
 * at pw_time.now = frames given to the stream - frames still queued or
 * buffered in the stream - delay (which includes the latency of what the
 * stream is linked to: the sink's port Latency param); extrapolated to the
 * instant the line is printed.
 *
 * Written for the tests (PipeWire 0.3.65's pw-cat prints no clock); built
 * by tests/src/pipewire.rs with cc and pkg-config libpipewire-0.3.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pipewire/pipewire.h>
#include <spa/param/audio/format-utils.h>

#define RATE 48000
#define CHANNELS 2
#define FRAME (2 * CHANNELS)

struct data {
	struct pw_main_loop *loop;
	struct pw_stream *stream;
	uint64_t written;    /* frames given to the stream */
	int eof;
	uint64_t drained_at; /* CLOCK_MONOTONIC ns when stdin ended */
	uint64_t last_print;
};

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void report(struct data *d)
{
	struct pw_time t;
	if (pw_stream_get_time_n(d->stream, &t, sizeof(t)) < 0 || t.rate.denom == 0)
		return;
	uint64_t now = mono_ns();
	if (now - d->last_print < 20000000ull)
		return;
	d->last_print = now;
	double delay_s = (double)t.delay * t.rate.num / t.rate.denom;
	double pending_s = ((double)t.queued / FRAME + (double)t.buffered) / RATE;
	double heard_s = (double)d->written / RATE - pending_s - delay_s;
	if (t.now > 0 && (uint64_t)t.now <= now)
		heard_s += (double)(now - (uint64_t)t.now) / 1e9;
	fprintf(stderr, "Time: %.6f sec; Latency: %.0f usec\n", heard_s,
		(delay_s + pending_s) * 1e6);
}

static void on_process(void *userdata)
{
	struct data *d = userdata;
	struct pw_buffer *b = pw_stream_dequeue_buffer(d->stream);
	if (b == NULL)
		return;
	struct spa_buffer *buf = b->buffer;
	uint8_t *dst = buf->datas[0].data;
	if (dst == NULL)
		return;
	uint32_t max = buf->datas[0].maxsize / FRAME;
	if (b->requested && b->requested < max)
		max = (uint32_t)b->requested;
	size_t got = 0;
	while (!d->eof && got < (size_t)max * FRAME) {
		ssize_t n = read(STDIN_FILENO, dst + got, (size_t)max * FRAME - got);
		if (n > 0)
			got += (size_t)n;
		else if (n == 0 || errno != EINTR)
			d->eof = 1;
	}
	got -= got % FRAME;
	if (got == 0 && d->eof) {
		if (d->drained_at == 0)
			d->drained_at = mono_ns();
		/* Let what was queued play out, then stop. */
		if (mono_ns() - d->drained_at > 1000000000ull)
			pw_main_loop_quit(d->loop);
		memset(dst, 0, (size_t)max * FRAME);
		got = (size_t)max * FRAME;
	} else {
		d->written += got / FRAME;
		/* The last piece: padded to a whole buffer with silence (a short
		 * buffer is not always passed on whole). */
		if (d->eof && got < (size_t)max * FRAME) {
			memset(dst + got, 0, (size_t)max * FRAME - got);
			got = (size_t)max * FRAME;
		}
	}
	buf->datas[0].chunk->offset = 0;
	buf->datas[0].chunk->stride = FRAME;
	buf->datas[0].chunk->size = (uint32_t)got;
	pw_stream_queue_buffer(d->stream, b);
	report(d);
}

static const struct pw_stream_events events = {
	PW_VERSION_STREAM_EVENTS,
	.process = on_process,
};

int main(int argc, char *argv[])
{
	if (argc != 2) {
		fprintf(stderr, "usage: pw-time-play TARGET-NODE-NAME < s16le-stereo-48k.raw\n");
		return 2;
	}
	struct data d = { 0 };
	uint8_t pod_buf[1024];
	struct spa_pod_builder b = SPA_POD_BUILDER_INIT(pod_buf, sizeof(pod_buf));

	pw_init(&argc, &argv);
	d.loop = pw_main_loop_new(NULL);
	struct pw_properties *props = pw_properties_new(
		PW_KEY_MEDIA_TYPE, "Audio",
		PW_KEY_MEDIA_CATEGORY, "Playback",
		PW_KEY_MEDIA_ROLE, "Music",
		PW_KEY_APP_NAME, "pw-time-play",
		PW_KEY_NODE_LATENCY, "1024/48000",
		PW_KEY_TARGET_OBJECT, argv[1],
		"node.target", argv[1],
		NULL);
	d.stream = pw_stream_new_simple(pw_main_loop_get_loop(d.loop), "pw-time-play",
					props, &events, &d);
	const struct spa_pod *params[1];
	params[0] = spa_format_audio_raw_build(&b, SPA_PARAM_EnumFormat,
		&SPA_AUDIO_INFO_RAW_INIT(.format = SPA_AUDIO_FORMAT_S16_LE,
					 .channels = CHANNELS, .rate = RATE,
					 .position = { SPA_AUDIO_CHANNEL_FL, SPA_AUDIO_CHANNEL_FR }));
	if (pw_stream_connect(d.stream, PW_DIRECTION_OUTPUT, PW_ID_ANY,
			      PW_STREAM_FLAG_AUTOCONNECT | PW_STREAM_FLAG_MAP_BUFFERS |
			      PW_STREAM_FLAG_RT_PROCESS,
			      params, 1) < 0) {
		fprintf(stderr, "pw-time-play: cannot connect the stream\n");
		return 1;
	}
	pw_main_loop_run(d.loop);
	pw_stream_destroy(d.stream);
	pw_main_loop_destroy(d.loop);
	pw_deinit();
	return 0;
}
