// The GoldenHour viewer: joins a room over the signaling WebSocket
// (docs/protocol.md, JSON text frames) and
//  - as expert or observer, answers the server's subscribe offers and plays the
//    crew's video and audio; an expert with a microphone also publishes it;
//  - as crew (a paramedic without glasses, on a phone or tablet), publishes
//    its camera and microphone.
// URL parameters: room (default demo), role (expert|observer|crew), name,
// codec (crew only: h264|vp8 forces the published video codec).
// Tests read window.goldenhour; nothing else depends on its shape.

import { FrameCodeReader } from "./framecode.js";
import { decode as decodeMsgpack } from "./msgpack.js";
import { ProbePanel } from "./probe.js";
import { TOOLS, Telestration } from "./telestration.js";

const ROLES = ["expert", "observer", "crew"];
const DATA_CHANNEL_LABEL = "goldenhour";
// Gathering finishes in milliseconds on a LAN; past this we send what we have.
const ICE_GATHERING_TIMEOUT_MS = 3000;
const REQUEST_TIMEOUT_MS = 10000;
const STATS_INTERVAL_MS = 250;
// Poses kept for matching a displayed frame by RTP timestamp (10 s at 30 fps).
const MAX_POSES = 300;
const MAX_RECENT_FRAME_IDS = 64;

const params = new URLSearchParams(location.search);
const role = ROLES.includes(params.get("role")) ? params.get("role") : "expert";
const room = params.get("room") || "demo";
const name = params.get("name") || `${role[0].toUpperCase()}${role.slice(1)} (browser)`;
const videoCodec = (params.get("codec") || "").toLowerCase();

const $ = (id) => document.getElementById(id);
const video = $("video");
const remoteAudio = $("remote-audio");
const probe = new ProbePanel($("probe-panel"), $("probe"), $("probe-overlay"), $("probe-label"));

// --- state visible to people (the page) and to tests (window.goldenhour) ----

const state = {
  room, role, name,
  peerId: null,
  joined: false,
  signaling: "connecting",
  peers: new Map(), // peer_id -> {peer_id, name, role}
  errors: [],
  publishing: false,
  microphone: null, // "on", or why not
  posesReceived: 0,
  lastPose: null,
  lastFrameCode: null, // {frameId, captureMs, rtpTimestamp, poseFrameId}
  recentFrameIds: [],
  // Displayed frames whose pose (found by RTP timestamp) names the same frame,
  // and any that name another: the proof that poses line up with pixels.
  posesMatched: 0,
  poseMismatches: [],
  stats: { framesDecoded: 0, framesReceived: 0, frameWidth: 0, frameHeight: 0,
           videoCodec: null, audioPacketsReceived: 0, framesEncoded: 0,
           publishedVideoCodec: null },
  subscribePc: null,
  publishPc: null,
  // performance.now() (ms since navigation) of each step: where the time goes.
  timeline: {},
  framesDecoded: async () => (await subscribeStats()).framesDecoded,
  probe: probe.drawn, // ultrasound frames shown, and how many with a model result
};
window.goldenhour = state;

function reportError(context, error) {
  const text = `${context}: ${error?.message ?? error}`;
  state.errors.push(text);
  console.error(text);
  const item = document.createElement("li");
  item.textContent = text;
  $("errors").append(item);
  render();
}

window.addEventListener("error", (event) => reportError("page", event.message));
window.addEventListener("unhandledrejection", (event) => reportError("page", event.reason));

function mark(step) {
  state.timeline[step] ??= Math.round(performance.now());
}

function render() {
  $("room").textContent = `room ${room} as ${role} (${name})`;
  const list = $("participants");
  list.replaceChildren(...[...state.peers.values()].map((peer) => {
    const item = document.createElement("li");
    item.textContent = `${peer.name} (${peer.role})`;
    if (peer.peer_id === state.peerId) {
      item.classList.add("self");
      item.textContent += " — you";
    }
    return item;
  }));
  const parts = [`signaling ${state.signaling}`];
  if (state.subscribePc) parts.push(`receiving ${state.subscribePc.connectionState}`);
  if (state.publishPc) parts.push(`sending ${state.publishPc.connectionState}`);
  if (state.microphone && role === "expert") parts.push(`microphone ${state.microphone}`);
  const s = state.stats;
  if (s.framesDecoded) {
    parts.push(`${s.frameWidth}x${s.frameHeight} ${s.videoCodec ?? ""}, ` +
               `${s.framesDecoded} frames decoded`);
  }
  if (s.framesEncoded) parts.push(`${s.publishedVideoCodec ?? ""} ${s.framesEncoded} frames sent`);
  $("status").textContent = parts.join(" · ");
  const q = state.quality;
  const indicator = $("quality");
  if (indicator && q) {
    indicator.dataset.level = q.level;
    indicator.textContent = q.level === "unknown" ? "link: measuring" :
      `link ${q.level}: ${q.bitrateKbps.toFixed(0)} kbit/s · ` +
      `RTT ${q.rttMs === null ? "?" : q.rttMs.toFixed(0)} ms · loss ${q.lossPercent.toFixed(1)}%`;
  }
  const code = state.lastFrameCode;
  if (code) {
    const delayMs = (Date.now() % 2 ** 32 - code.captureMs + 2 ** 32) % 2 ** 32;
    $("frame").textContent = `frame ${code.frameId}\nrtp ${code.rtpTimestamp}\n` +
      `capture to display ${delayMs} ms\nposes ${state.posesReceived}` +
      (code.poseFrameId === null ? "" : `, this frame's: ${code.poseFrameId}`);
  }
}

// --- signaling --------------------------------------------------------------

/** The signaling WebSocket: requests carry an `id` and resolve on the reply that echoes it. */
class Signaling {
  #ws;
  #nextId = 1;
  #pending = new Map();

  constructor(url, onMessage) {
    this.#ws = new WebSocket(url);
    this.onMessage = onMessage;
    this.opened = new Promise((resolve, reject) => {
      this.#ws.onopen = resolve;
      this.#ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
    this.#ws.onmessage = (event) => this.#receive(event.data);
    this.#ws.onclose = (event) => {
      state.signaling = `closed (${event.code})`;
      for (const { reject } of this.#pending.values()) reject(new Error("signaling closed"));
      this.#pending.clear();
      render();
    };
  }

  send(message) {
    this.#ws.send(JSON.stringify(message));
  }

  request(message) {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`no reply to ${message.type} in ${REQUEST_TIMEOUT_MS} ms`));
      }, REQUEST_TIMEOUT_MS);
      this.#pending.set(id, {
        resolve: (reply) => { clearTimeout(timer); resolve(reply); },
        reject: (error) => { clearTimeout(timer); reject(error); },
      });
      this.send({ ...message, id });
    });
  }

  close() {
    this.#ws.close();
  }

  #receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (error) {
      reportError("signaling", `unparseable message: ${error}`);
      return;
    }
    const pending = this.#pending.get(message.id);
    // A subscribe offer is never a reply, whatever id it carries.
    if (pending && message.type !== "subscribe_offer") {
      this.#pending.delete(message.id);
      if (message.type === "error") {
        pending.reject(new Error(`${message.code}: ${message.message}`));
      } else {
        pending.resolve(message);
      }
      return;
    }
    this.onMessage(message);
  }
}

// --- WebRTC helpers ---------------------------------------------------------

/** Resolve once `pc` has gathered all its candidates (or the timeout passed). */
function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, ICE_GATHERING_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/**
 * Prefer `mimeType` for a video transceiver. For H.264, constrained baseline
 * with packetization-mode 1 comes first: Chromium encodes H.264 with OpenH264,
 * which produces constrained baseline only, and aiortc accepts that profile.
 */
function preferVideoCodec(transceiver, mimeType) {
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
  const rank = (codec) => {
    const fmtp = codec.sdpFmtpLine ?? "";
    return (fmtp.includes("packetization-mode=1") ? 0 : 2) +
           (fmtp.includes("profile-level-id=42e0") ? 0 : 1);
  };
  const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === mimeType)
    .sort((a, b) => rank(a) - rank(b));
  if (!wanted.length) throw new Error(`this browser cannot send ${mimeType}`);
  const rtx = codecs.filter((c) => c.mimeType.toLowerCase() === "video/rtx");
  transceiver.setCodecPreferences([...wanted, ...rtx]);
}

function codecOf(report, codecId) {
  return codecId ? report.get(codecId)?.mimeType ?? null : null;
}

// Connection quality from getStats: receive bitrate, round-trip time of the
// selected candidate pair, and packet loss, over the last polling interval.
const qualityWindow = { bytes: 0, lost: 0, received: 0, at: 0 };

function qualityFrom(report) {
  let bytes = 0, lost = 0, received = 0, rttMs = null;
  for (const entry of report.values()) {
    if (entry.type === "inbound-rtp") {
      bytes += entry.bytesReceived ?? 0;
      lost += entry.packetsLost ?? 0;
      received += entry.packetsReceived ?? 0;
    }
    if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded" &&
        entry.currentRoundTripTime !== undefined) {
      rttMs = entry.currentRoundTripTime * 1000;
    }
  }
  const now = performance.now();
  const dt = (now - qualityWindow.at) / 1000;
  const quality = { bitrateKbps: null, rttMs, lossPercent: null, level: "unknown" };
  if (qualityWindow.at && dt > 0) {
    quality.bitrateKbps = Math.max(0, (bytes - qualityWindow.bytes) * 8 / dt / 1000);
    const dLost = Math.max(0, lost - qualityWindow.lost);
    const dReceived = Math.max(0, received - qualityWindow.received);
    quality.lossPercent = dLost + dReceived ? (100 * dLost) / (dLost + dReceived) : 0;
    const bad = (quality.lossPercent > 5) || (rttMs !== null && rttMs > 400) || quality.bitrateKbps < 100;
    const fair = (quality.lossPercent > 1) || (rttMs !== null && rttMs > 150) || quality.bitrateKbps < 400;
    quality.level = bad ? "poor" : fair ? "fair" : "good";
  }
  Object.assign(qualityWindow, { bytes, lost, received, at: now });
  return quality;
}

async function subscribeStats() {
  const out = { framesDecoded: 0, framesReceived: 0, frameWidth: 0, frameHeight: 0,
                videoCodec: null, audioPacketsReceived: 0 };
  if (!state.subscribePc) return out;
  const report = await state.subscribePc.getStats();
  state.quality = qualityFrom(report);
  for (const entry of report.values()) {
    if (entry.type === "inbound-rtp" && entry.kind === "audio") {
      out.audioPacketsReceived += entry.packetsReceived ?? 0;
    }
    if (entry.type === "inbound-rtp" && entry.kind === "video") {
      out.framesDecoded += entry.framesDecoded ?? 0;
      out.framesReceived += entry.framesReceived ?? 0;
      out.frameWidth = entry.frameWidth ?? out.frameWidth;
      out.frameHeight = entry.frameHeight ?? out.frameHeight;
      out.videoCodec = codecOf(report, entry.codecId) ?? out.videoCodec;
    }
  }
  return out;
}

async function publishStats() {
  // sendCeilingBps: the browser's own estimate of what it may send (bits/s),
  // which follows the server's bandwidth feedback (docs/sfu.md).
  const out = { framesEncoded: 0, publishedVideoCodec: null, sendCeilingBps: null };
  if (!state.publishPc) return out;
  const report = await state.publishPc.getStats();
  for (const entry of report.values()) {
    if (entry.type === "outbound-rtp" && entry.kind === "video") {
      out.framesEncoded += entry.framesEncoded ?? 0;
      out.publishedVideoCodec = codecOf(report, entry.codecId) ?? out.publishedVideoCodec;
    }
    if (entry.type === "candidate-pair" && entry.nominated && entry.availableOutgoingBitrate !== undefined) {
      out.sendCeilingBps = entry.availableOutgoingBitrate;
    }
  }
  return out;
}

// --- receiving: the subscribe connection (the server offers) -----------------

const trackInfo = new Map(); // mid -> the offer's {mid, producer_id, peer_id, kind, codec}
const remoteTracks = []; // {track, info}
const poses = new Map(); // RTP timestamp -> pose
let shownVideo = undefined; // the {track, info} in the <video> element

function showRemoteMedia() {
  // A track is shown while the peer it currently carries is in the room: the
  // server reuses a departed peer's m-line (and so this track) for the next.
  const live = remoteTracks.filter(({ track, info }) =>
    track.readyState === "live" && (!info.peer_id || state.peers.has(info.peer_id)));
  const audio = live.filter(({ track }) => track.kind === "audio").map(({ track }) => track);
  if (role === "crew") {
    // The crew's video element previews its own camera; experts are heard only.
    remoteAudio.srcObject = audio.length ? new MediaStream(audio) : null;
    play(remoteAudio);
    return;
  }
  // One picture: the first crew's camera; every other peer is heard. A probe
  // (a video track named "ultrasound") has a panel of its own.
  probe.show(live.find(({ track, info }) => track.kind === "video" && info.source === "ultrasound")
    ?? null);
  const shown = live.find(({ track, info }) => track.kind === "video" && info.source !== "ultrasound");
  shownVideo = shown;
  const tracks = shown ? [shown.track, ...audio] : audio;
  const stream = video.srcObject;
  if (!tracks.length || !stream) {
    video.srcObject = tracks.length ? new MediaStream(tracks) : null;
    play(video);
    return;
  }
  // Tracks come and go on the stream the element already plays: a new
  // MediaStream would reload the element, and every expert's picture would
  // go blank for a moment whenever someone joins or leaves and their audio
  // track with them.
  const current = stream.getTracks();
  for (const track of current) if (!tracks.includes(track)) stream.removeTrack(track);
  for (const track of tracks) if (!current.includes(track)) stream.addTrack(track);
}

/** Start playback; where the browser forbids autoplay with sound, play muted and offer unmute. */
async function play(element) {
  if (!element.srcObject) return;
  try {
    await element.play();
  } catch (error) {
    if (error.name === "NotAllowedError" && !element.muted) {
      element.muted = true;
      const unmute = $("unmute");
      unmute.hidden = false;
      unmute.onclick = () => {
        element.muted = false;
        unmute.hidden = true;
      };
      await play(element);
    } else if (error.name !== "AbortError") {
      // AbortError: a newer srcObject replaced this one, and its own play() follows.
      reportError("playback", error);
    }
  }
}

/**
 * The pose of the frame with this RTP timestamp. Chromium reports the RTP
 * timestamp of some frames (a third, in one sample here) one tick (11 us at
 * 90 kHz) below what was sent; frames are thousands of ticks apart, so a pose
 * one or two ticks away belongs to the same frame.
 */
function poseFor(rtpTimestamp) {
  if (rtpTimestamp === null || rtpTimestamp === undefined) return undefined;
  for (const delta of [0, 1, -1, 2, -2]) {
    const pose = poses.get((rtpTimestamp + delta + 2 ** 32) % 2 ** 32);
    if (pose) return pose;
  }
  return undefined;
}

function onFrameCode(code) {
  mark("firstFrameCode");
  // The server may shift a reused m-line's timestamps; poses use the publisher's.
  const offset = shownVideo?.info.rtp_timestamp_offset ?? 0;
  const pose = code.rtpTimestamp == null ? undefined
    : poseFor((code.rtpTimestamp - offset + 2 ** 32) % 2 ** 32);
  const shown = state.lastFrameCode = { ...code, poseFrameId: pose?.frame_id ?? null };
  if (pose?.frame_id === code.frameId) state.posesMatched++;
  else if (pose && state.poseMismatches.length < 20) state.poseMismatches.push(shown);
  state.recentFrameIds.push(code.frameId);
  if (state.recentFrameIds.length > MAX_RECENT_FRAME_IDS) state.recentFrameIds.shift();
}

function onPose(message) {
  state.posesReceived++;
  state.lastPose = message;
  poses.set(message.rtp_timestamp, message);
  if (poses.size > MAX_POSES) poses.delete(poses.keys().next().value);
}

function createSubscribeConnection(iceServers) {
  const pc = new RTCPeerConnection({ iceServers });
  pc.ontrack = ({ track, transceiver }) => {
    const info = trackInfo.get(transceiver.mid) ?? { mid: transceiver.mid, kind: track.kind };
    remoteTracks.push({ track, info });
    track.addEventListener("ended", showRemoteMedia);
    showRemoteMedia();
  };
  pc.ondatachannel = ({ channel }) => {
    if (channel.label !== DATA_CHANNEL_LABEL) return;
    channel.binaryType = "arraybuffer";
    channel.onmessage = ({ data }) => {
      try {
        const message = typeof data === "string" ? JSON.parse(data) : decodeMsgpack(data);
        if (message.type === "pose") onPose(message);
        else if (message.type === "overlay") probe.onOverlay(message);
        else if (message.type === "error") reportError("data channel", message.message);
      } catch (error) {
        reportError("data channel", error);
      }
    };
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") mark("subscribeConnected");
    render();
  };
  return pc;
}

async function answerSubscribeOffer(signaling, offer) {
  for (const info of offer.tracks) trackInfo.set(info.mid, info);
  for (const remote of remoteTracks) {
    const info = trackInfo.get(remote.info.mid);
    if (info) remote.info = info;
  }
  showRemoteMedia();
  const pc = state.subscribePc;
  mark(`subscribeOffer${offer.revision}`);
  await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
  await pc.setLocalDescription();
  // No trickle: the answer carries every candidate (fast on loopback and LAN).
  await iceGatheringComplete(pc);
  signaling.send({ type: "subscribe_answer", sdp: pc.localDescription.sdp,
                   revision: offer.revision });
  mark(`subscribeAnswer${offer.revision}`);
}

// --- sending: the publish connection (we offer) ------------------------------

async function publish(signaling, stream, iceServers) {
  const pc = state.publishPc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
  pc.onconnectionstatechange = render;
  for (const track of stream.getTracks()) {
    const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    if (track.kind === "video" && videoCodec) preferVideoCodec(transceiver, `video/${videoCodec}`);
  }
  await pc.setLocalDescription();
  await iceGatheringComplete(pc);
  const answer = await signaling.request({ type: "publish", sdp: pc.localDescription.sdp });
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  state.publishing = true;
  mark("published");
  render();
}

// An expert talks with an open microphone, or holds "talk" (or the space bar)
// to speak: in a noisy room or a ward, push-to-talk keeps the crew's ears clear.
function setupTalking(stream) {
  const track = stream.getAudioTracks()[0];
  const openMic = $("open-mic");
  const talk = $("talk");
  $("talking").hidden = false;
  const apply = (held) => {
    track.enabled = openMic.checked || held;
    state.microphone = openMic.checked ? "open" : track.enabled ? "talking" : "push to talk";
    talk.classList.toggle("active", track.enabled);
    render();
  };
  openMic.onchange = () => apply(false);
  for (const [event, held] of [["pointerdown", true], ["pointerup", false], ["pointerleave", false]]) {
    talk.addEventListener(event, () => apply(held));
  }
  window.addEventListener("keydown", (e) => {
    if (e.code === "Space" && e.target.tagName !== "INPUT" && !e.repeat) { e.preventDefault(); apply(true); }
  });
  window.addEventListener("keyup", (e) => { if (e.code === "Space") apply(false); });
  apply(false);
}

async function microphone() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    state.microphone = "on";
    setupTalking(stream);
    return stream;
  } catch (error) {
    // An expert without a microphone still watches and annotates.
    state.microphone = `unavailable (${error.name})`;
    return null;
  }
}

// --- the session --------------------------------------------------------------

// Offers are answered strictly in order: each answer's revision must match.
let subscribeChain = Promise.resolve();

function onSignalingMessage(signaling, message) {
  // Telestration redraws its overlay, and asks for the annotation list to be
  // rebuilt only when annotations come or go: visibility (on each change) and
  // lasers (up to 20 a second) must not rebuild the page's lists and text.
  if (state.telestration?.onMessage(message)) return;
  switch (message.type) {
    case "subscribe_offer":
      subscribeChain = subscribeChain.then(() => answerSubscribeOffer(signaling, message))
        .catch((error) => reportError("subscribe", error));
      break;
    case "peer_joined":
      state.peers.set(message.peer.peer_id, message.peer);
      break;
    case "peer_left":
      // Its tracks stay open: the server may hand their m-lines to the next peer.
      state.peers.delete(message.peer_id);
      showRemoteMedia();
      break;
    case "error":
      reportError("server", `${message.code}: ${message.message}`);
      break;
    default:
      break; // newer servers may send more; ignoring them keeps this page working
  }
  render();
}

async function pollStats() {
  try {
    Object.assign(state.stats, await subscribeStats(), await publishStats());
    if (state.stats.framesDecoded) mark("framesDecoded");
    render();
  } catch (error) {
    reportError("stats", error);
  }
}

// --- telestration: drawing on the crew's picture ------------------------------

function startTelestration(signaling) {
  const canvas = $("annotations");
  // For tests and scripts: raw requests and the track on screen.
  state.request = (message) => signaling.request(message);
  state.currentTrack = () => shownVideo?.info;
  const telestration = state.telestration = new Telestration({
    video,
    request: (message) => signaling.request(message),
    send: (message) => signaling.send(message),
    currentTrack: () => shownVideo?.info,
    poseFor,
    onChange: renderAnnotationList,
    askText: async () => $("label-text").value || "label",
  }, canvas, $("draw-input"));
  if (role === "observer") {
    $("tools").hidden = true;
    $("draw-input").style.pointerEvents = "none";
    return;
  }
  const toolbar = $("tool-buttons");
  for (const tool of TOOLS) {
    const button = document.createElement("button");
    button.textContent = tool;
    button.dataset.tool = tool;
    button.onclick = () => {
      telestration.tool = tool;
      for (const b of toolbar.children) b.classList.toggle("active", b.dataset.tool === tool);
    };
    button.classList.toggle("active", tool === telestration.tool);
    toolbar.append(button);
  }
  const guard = (action) => () => action().catch((error) => reportError("annotation", error));
  $("share-image").onchange = guard(async () => {
    const file = $("share-image").files[0];
    if (file) await telestration.chooseImage(file, $("label-text").value);
    for (const b of toolbar.children) b.classList.toggle("active", b.dataset.tool === telestration.tool);
  });
  $("undo").onclick = guard(() => telestration.undo());
  $("redo").onclick = guard(() => telestration.redo());
  $("clear-mine").onclick = guard(() => telestration.clearMine());
  $("freeze").onclick = () => {
    if (telestration.frozen) telestration.resume(); else telestration.freeze();
    $("freeze").textContent = telestration.frozen ? "resume" : "freeze";
  };
}

function renderAnnotationList() {
  const list = $("annotation-list");
  if (!list || !state.telestration) return;
  state.listRebuilds = (state.listRebuilds ?? 0) + 1;
  list.replaceChildren(...[...state.telestration.annotations.values()].map((a) => {
    const item = document.createElement("li");
    item.style.borderLeft = `6px solid ${a.color}`;
    const measured = (a.measurements ?? []).filter((x) => x.name !== "perimeter" && x.name !== "length")
      .map((x) => ` ${x.value.toFixed(1)} ${x.unit}`).join("");
    item.textContent = `${a.author_name}: ${a.kind}${a.text ? ` "${a.text}"` : ""}${measured}`;
    if (a.author_peer_id === state.peerId) {
      const remove = document.createElement("button");
      remove.textContent = "delete";
      remove.onclick = () => state.telestration.remove(a.annotation_id)
        .catch((error) => reportError("annotation", error));
      item.append(" ", remove);
    }
    return item;
  }));
}

async function main() {
  mark("script");
  render();
  let localStream = null;
  if (role === "crew") {
    // The camera first: without it a crew page has nothing to offer.
    localStream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: true });
    video.muted = true;
    video.srcObject = localStream;
    play(video);
  } else if (role === "expert") {
    localStream = await microphone();
  }

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const signaling = new Signaling(`${scheme}://${location.host}/ws`,
                                  (message) => onSignalingMessage(signaling, message));
  window.addEventListener("pagehide", () => signaling.close());
  await signaling.opened;
  mark("signalingOpen");
  state.signaling = "open";

  const reader = new FrameCodeReader(video, onFrameCode);
  if (role !== "crew") reader.start();
  state.frameCodes = () => ({ seen: reader.framesSeen, tried: reader.framesTried, read: reader.framesRead,
                              fromPlanes: reader.framesReadFromPlanes });

  const joined = await signaling.request({ type: "join", room, role, name,
                                           create: role === "crew" });
  // The `joined` reply resumes us in a microtask, before the WebSocket can
  // deliver the next message (the first subscribe offer), so the subscribe
  // connection exists by the time any offer is handled.
  state.subscribePc = createSubscribeConnection(joined.ice_servers);
  state.peerId = joined.peer_id;
  state.peers.set(joined.peer_id, { peer_id: joined.peer_id, name, role });
  for (const peer of joined.peers) state.peers.set(peer.peer_id, peer);
  state.joined = true;
  mark("joined");
  state.signaling = "joined";
  render();

  if (role !== "crew") startTelestration(signaling);
  else {
    const button = $("request-guidance");
    button.hidden = false;
    button.onclick = () => signaling.request({ type: "request_guidance" })
      .then(() => { button.textContent = "Guidance requested"; })
      .catch((error) => reportError("request guidance", error));
  }
  setInterval(pollStats, STATS_INTERVAL_MS);
  if (localStream) await publish(signaling, localStream, joined.ice_servers);
}

main().catch((error) => {
  state.signaling = "failed";
  reportError("session", error);
});
