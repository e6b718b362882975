// The ultrasound probe's picture with the model's result drawn on it.
//
// A crew may publish a second video track named "ultrasound" (protocol:
// `publish.sources`); the server runs its model on it and sends `overlay`
// messages on the data channel, each about one frame, named by its RTP
// timestamp on the publisher's clock. Overlays come for some frames, not all
// (the model skips frames while busy): each displayed frame shows the newest
// overlay about that frame or an earlier one, at most STALE_TICKS before it,
// so a result is never drawn on a picture older than the one it describes.
// The label carries the model's name and version, its probability, and
// NOT FOR CLINICAL USE where the model card says so.

const STALE_TICKS = 90000; // one second at 90 kHz
const MAX_OVERLAYS = 64;
const CONTOUR_COLOUR = "#00e5ff";

export class ProbePanel {
  constructor(panel, video, canvas, label) {
    this.panel = panel;
    this.video = video;
    this.canvas = canvas;
    this.label = label;
    this.remote = null; // {track, info}
    this.overlays = []; // newest last
    this.drawn = { frames: 0, withOverlay: 0, lastOverlay: null, lastRtpTimestamp: null };
    this.video.requestVideoFrameCallback?.((now, meta) => this.onFrame(meta));
  }

  /** Show this remote track ({track, info}) or, with null, hide the panel. */
  show(remote) {
    if (remote?.track === this.remote?.track) return;
    this.remote = remote;
    this.panel.hidden = !remote;
    this.video.srcObject = remote ? new MediaStream([remote.track]) : null;
    if (remote) this.video.play().catch(() => {});
  }

  onOverlay(message) {
    if (this.remote && message.producer_id !== this.remote.info.producer_id) return;
    this.overlays.push(message);
    if (this.overlays.length > MAX_OVERLAYS) this.overlays.shift();
  }

  /** The newest overlay about this frame or one at most STALE_TICKS earlier. */
  overlayFor(rtpTimestamp) {
    for (let i = this.overlays.length - 1; i >= 0; i--) {
      const age = (rtpTimestamp - this.overlays[i].rtp_timestamp + 2 ** 32) % 2 ** 32;
      if (age <= STALE_TICKS) return this.overlays[i];
    }
    return null;
  }

  onFrame(meta) {
    this.video.requestVideoFrameCallback((now, next) => this.onFrame(next));
    if (!this.remote || meta.rtpTimestamp === undefined) return;
    const offset = this.remote.info.rtp_timestamp_offset ?? 0;
    const rtp = (meta.rtpTimestamp - offset + 2 ** 32) % 2 ** 32;
    const overlay = this.overlayFor(rtp);
    this.drawn.frames++;
    this.drawn.lastRtpTimestamp = rtp;
    if (overlay) {
      this.drawn.withOverlay++;
      this.drawn.lastOverlay = { rtp_timestamp: overlay.rtp_timestamp, model: overlay.model };
    }
    this.draw(overlay, meta.width, meta.height);
  }

  draw(overlay, frameWidth, frameHeight) {
    const rect = this.video.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(rect.width * ratio);
    this.canvas.height = Math.round(rect.height * ratio);
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (!overlay) {
      this.label.textContent = "no model result yet";
      return;
    }
    // The picture inside the element (object-fit: contain).
    const scale = Math.min(rect.width / frameWidth, rect.height / frameHeight) * ratio;
    const x0 = (this.canvas.width - frameWidth * scale) / 2;
    const y0 = (this.canvas.height - frameHeight * scale) / 2;
    ctx.strokeStyle = CONTOUR_COLOUR;
    ctx.lineWidth = 2 * ratio;
    for (const polygon of overlay.contours) {
      ctx.beginPath();
      polygon.forEach(([u, v], i) => {
        const x = x0 + u * frameWidth * scale, y = y0 + v * frameHeight * scale;
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.closePath();
      ctx.stroke();
    }
    const verdict = overlay.positive ? "POSITIVE" : "negative";
    const lines = [`${overlay.model} v${overlay.version}`,
      `p=${overlay.probability.toFixed(2)} (threshold ${overlay.threshold.toFixed(2)}): ${verdict}`];
    if (overlay.not_for_clinical_use) lines.push("NOT FOR CLINICAL USE - synthetic training data");
    this.label.textContent = lines.join("\n");
    this.label.dataset.positive = String(overlay.positive);
  }
}
