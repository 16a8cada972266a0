# Shared by scripts/demo.sh, scripts/soak.sh and scripts/valgrind-load-unload.sh:
# private PulseAudio daemons and host-playd in a work directory. Source it after setting:
#   work  the work directory      pids  an array the caller's cleanup kills
#   root  the repository root     tag   a word prefixed to error messages

# The private environment of the PulseAudio whose directory is $1 (own
# HOME, runtime, state and config directories, created here), as NAME=VALUE
# words in the array pulse_env for `env "${pulse_env[@]}" CMD` (a simple
# command, so that $! of `... &` is the daemon's own pid).
set_pulse_env() {
  local dir="$1"
  mkdir -p "$dir/runtime" "$dir/state" "$dir/home"
  pulse_env=(HOME="$dir/home" XDG_RUNTIME_DIR="$dir/runtime" PULSE_RUNTIME_PATH="$dir/runtime"
    PULSE_STATE_PATH="$dir/state" PULSE_CONFIG_PATH="$dir/state")
}

# The daemon options every private PulseAudio here runs with, its native
# socket at $1/native; sets the array pulse_opts.
set_pulse_opts() {
  pulse_opts=(-n --daemonize=no --exit-idle-time=-1 --use-pid-file=no --disable-shm=yes
    --log-target=stderr -L "module-native-protocol-unix socket=$1/native auth-anonymous=1")
}

# Starts a private PulseAudio in $1 (see set_pulse_env; a native socket
# $1/native); further arguments go to pulseaudio. Writes its pid to $1/pid
# and waits until it answers.
start_pulse() {
  local dir="$1"; shift
  set_pulse_env "$dir"
  set_pulse_opts "$dir"
  env "${pulse_env[@]}" pulseaudio "${pulse_opts[@]}" --disallow-exit "$@" \
    2>"$dir/pulseaudio.log" &
  pids+=("$!")
  echo "$!" >"$dir/pid"
  for _ in $(seq 100); do
    pactl --server "unix:$dir/native" info >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$tag: PulseAudio in $dir did not start; its log:" >&2
  tail -20 "$dir/pulseaudio.log" >&2
  return 1
}

# Starts target/release/host-playd with the given arguments plus
# --listen unix:$work/playd.sock, logging to $work/host-playd.log, and waits
# for its socket. Sets playd_pid.
start_playd() {
  "$root/target/release/host-playd" --listen "unix:$work/playd.sock" "$@" \
    2>"$work/host-playd.log" &
  playd_pid=$!
  pids+=("$playd_pid")
  for _ in $(seq 100); do [ -S "$work/playd.sock" ] && break; sleep 0.1; done
}

# Starts the guest PulseAudio in $work/guest with a module directory holding
# PulseAudio's own modules and ours (--dl-search-path replaces the search
# path, and pactl load-module refuses absolute paths). Sets guest.
start_guest() {
  make_module_dir
  start_pulse "$work/guest" --dl-search-path="$mods"
  guest="unix:$work/guest/native"
}

# Creates $work/modules, PulseAudio's own modules plus ours, for
# --dl-search-path (it replaces the search path, and pactl load-module
# refuses absolute paths). Sets mods.
make_module_dir() {
  mods="$work/modules"
  [ -d "$mods" ] && return 0
  mkdir -p "$mods"
  ln -s "$(pkg-config --variable=modlibexecdir libpulse)"/* "$mods/"
  ln -sf "$root/target/release/libmodule_secure_tunnel_sink.so" \
    "$mods/module-secure-tunnel-sink.so"
  if [ -e "$root/target/release/libmodule_secure_tunnel_source.so" ]; then
    ln -sf "$root/target/release/libmodule_secure_tunnel_source.so" \
      "$mods/module-secure-tunnel-source.so"
  fi
}
