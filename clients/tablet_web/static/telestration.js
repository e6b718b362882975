// Telestration: the expert draws on the crew's live picture; the server anchors
// each drawing in 3D against the pose of the frame it was drawn on
// (docs/protocol.md, `annotate`), and every displayed frame re-projects every
// anchored annotation with that frame's own pose, so drawings stay on the
// patient while the camera moves.
//
// Input is pointer events (mouse, touch and pen alike), taken by a transparent
// layer over the video. Coordinates sent are normalised to the picture (0..1
// from its top-left corner), whatever the element's size or letterboxing.
//
// The canvas that shows the drawings covers only what is drawn, not the
// picture: without a GPU, a browser's compositor blends every pixel of an
// overlay over each new video frame, and a full-size one cost 0.13 of a core
// here (bench/annotation_roundtrip.py) for a few small marks.

import { contentRect, projectPoints } from "./geometry.js";

export const TOOLS = ["pen", "arrow", "ellipse", "point", "label", "ruler", "polyline", "polygon", "laser", "image"];
// A shared image travels in one message: the server takes up to 44 KiB.
const MAX_IMAGE_BYTES = 44 * 1024;
const IMAGE_MAX_SIDE_PX = 640;
// Tool -> the shape kind the server anchors.
const KIND = { pen: "stroke", arrow: "arrow", ellipse: "ellipse", point: "point", label: "label",
               ruler: "ruler", polyline: "stroke", polygon: "polygon" };
// Pointer samples closer than this (CSS px) to the previous one are dropped.
const MIN_SAMPLE_PX = 2;
const MAX_POINTS = 2048;
const LASER_INTERVAL_MS = 50;
const ELLIPSE_POINTS = 48;

const UNITS = { mm: "mm", "mm²": "mm²", deg: "°" };

export class Telestration {
  #api;
  #canvas;
  #input;
  #ctx;
  #extent = null; // the canvas's place over the input layer: {x, y, width, height}
  #videoSize = null; // the video element's box, as the last layout left it
  #tool = "pen";
  #draft = null; // {tool, points: [[u, v]], rtp, producerId}
  #frozen = null; // {rtp, bitmap}
  #lastFrame = null; // {rtpPublisher, pose}
  #undo = []; // own annotation messages, newest last
  #redo = [];
  #laserSentMs = 0;
  #drawnKey = null; // what the overlay showed when last drawn (see #drawForFrame)
  #drawQueued = false;
  #emptyShown = null; // whether the overlay is hidden (opacity 0) as empty

  /**
   * api: {video, request(message) -> Promise<reply>, send(message),
   *       currentTrack() -> {producer_id, rtp_timestamp_offset} | undefined,
   *       poseFor(publisherRtp) -> pose | undefined, selfId() -> peer id,
   *       onChange()}
   * canvas shows the drawings; input (a transparent element over the video,
   * the canvas's positioned parent's size) takes the pointer.
   */
  constructor(api, canvas, input) {
    this.#api = api;
    this.#canvas = canvas;
    this.#input = input;
    this.#ctx = canvas.getContext("2d");
    this.annotations = new Map(); // annotation_id -> annotation message
    this.hidden = new Map(); // annotation_id -> Set of point indices the camera cannot see
    this.lasers = new Map(); // author -> {point_world_m, color, until}
    // For tests and the status line: what the last drawn frame showed.
    this.lastProjection = { rtpTimestamp: null, poseFrameId: null, pose: null, shapes: {} };
    this.errors = [];
    this.pending = 0;
    input.addEventListener("pointerdown", (e) => this.#down(e));
    input.addEventListener("pointermove", (e) => this.#move(e));
    input.addEventListener("pointerup", (e) => this.#up(e));
    input.addEventListener("pointercancel", () => { this.#draft = null; });
    input.addEventListener("dblclick", (e) => this.#finishPolyline(e));
    // The video's box, from layout as it happens: each video frame and pointer
    // move needs it, and reading clientWidth there forced a layout whenever the
    // page had changed since (the drawings' canvas moves with what is drawn).
    new ResizeObserver(([entry]) => {
      const box = entry.borderBoxSize?.[0];
      // (Rounded, as clientWidth is: the same mapping as before, to the pixel.)
      this.#videoSize = box ? { width: Math.round(box.inlineSize), height: Math.round(box.blockSize) }
                            : { width: entry.target.clientWidth, height: entry.target.clientHeight };
      this.#requestDraw();
    }).observe(api.video);
    this.#scheduleFrame();
  }

  get tool() { return this.#tool; }
  set tool(name) {
    if (!TOOLS.includes(name)) throw new Error(`unknown tool ${name}`);
    this.#tool = name;
    this.#draft = null;
  }

  get frozen() { return this.#frozen !== null; }

  // --- freeze-frame ---------------------------------------------------------

  freeze() {
    if (this.#frozen || !this.#lastFrame) return false;
    this.#frozen = { ...this.#lastFrame };
    this.#api.video.pause();
    // The server keeps only the last 10 s of poses: ask it to keep this frame's
    // for as long as the expert takes to draw on it.
    const frame = this.#drawnFrame();
    if (frame) {
      this.frozenAck = this.#api.request({ type: "freeze_frame", producer_id: frame.producerId,
                                           rtp_timestamp: frame.rtp })
        .catch((error) => { this.errors.push(String(error.message ?? error)); });
    }
    return true;
  }

  resume() {
    this.#frozen = null;
    this.#api.video.play().catch(() => {});
  }

  // --- incoming -------------------------------------------------------------

  onMessage(message) {
    switch (message.type) {
      case "annotation":
        this.annotations.set(message.annotation_id, message);
        break;
      case "annotations_removed":
        for (const id of message.annotation_ids) this.annotations.delete(id);
        break;
      case "annotation_visibility": {
        // Points the crew's camera cannot see (behind the patient, say): dashed.
        const hidden = new Map();
        for (const [id, runs] of Object.entries(message.occluded)) {
          const set = new Set();
          for (const [start, end] of runs) for (let i = start; i < end; i++) set.add(i);
          hidden.set(id, set);
        }
        this.hidden = hidden;
        this.visibilityFrame = message.rtp_timestamp;
        break;
      }
      case "laser_point":
        this.lasers.set(message.author_peer_id, { ...message, until: performance.now() + 1500 });
        break;
      default:
        return false;
    }
    // The page's lists show annotations: only their arrival or removal changes them.
    // Lasers (up to 20 a second) and visibility change only the overlay.
    if (message.type === "annotation" || message.type === "annotations_removed") this.#api.onChange();
    this.#requestDraw();
    return true;
  }

  // --- own annotations: undo, redo, delete, clear ------------------------------

  async undo() {
    const last = this.#undo.pop();
    if (!last) return;
    this.onMessage(await this.#api.request({ type: "annotation_delete", annotation_id: last.annotation_id }));
    this.#redo.push(last);
  }

  async redo() {
    // The server keeps what undo deleted and puts it back exactly as it was
    // anchored (annotation_restore): no pose needed, shared images included.
    const again = this.#redo.pop();
    if (!again) return;
    const reply = await this.#api.request({ type: "annotation_restore", annotation_id: again.annotation_id });
    this.onMessage(reply);
    this.#undo.push(again);
  }

  async remove(annotationId) {
    this.onMessage(await this.#api.request({ type: "annotation_delete", annotation_id: annotationId }));
    this.#undo = this.#undo.filter((a) => a.annotation_id !== annotationId);
  }

  async clearMine() {
    this.onMessage(await this.#api.request({ type: "annotation_clear" }));
    this.#undo = [];
    this.#redo = [];
  }

  // --- drawing --------------------------------------------------------------

  #picturePoint(event) {
    const video = this.#api.video;
    const rect = contentRect(video, this.#videoBox());
    const box = this.#input.getBoundingClientRect();
    const x = event.clientX - box.left - rect.x;
    const y = event.clientY - box.top - rect.y;
    return [Math.min(1, Math.max(0, x / rect.width)), Math.min(1, Math.max(0, y / rect.height))];
  }

  // The frame being drawn on: the frozen one, or the one on screen now.
  #drawnFrame() {
    const frame = this.#frozen ?? this.#lastFrame;
    const track = this.#api.currentTrack();
    if (!frame || !track) return null;
    return { rtp: frame.rtpPublisher, producerId: track.producer_id };
  }

  #down(event) {
    if (event.button !== undefined && event.button > 0) return;
    const frame = this.#drawnFrame();
    if (!frame) return;
    this.#input.setPointerCapture?.(event.pointerId);
    const point = this.#picturePoint(event);
    if (this.#tool === "image") {
      this.#placeImage(point, frame).catch((error) => this.errors.push(String(error.message ?? error)));
      return;
    }
    if (this.#tool === "laser") {
      this.#draft = { tool: "laser" };
      this.#sendLaser(point, frame);
      return;
    }
    if (this.#tool === "polyline" || this.#tool === "polygon") {
      // Click by click; double-click (or closing on the first point) ends it.
      if (!this.#draft) this.#draft = { tool: this.#tool, points: [], ...frame };
      this.#draft.points.push(point);
      this.#requestDraw();
      return;
    }
    this.#draft = { tool: this.#tool, points: [point], ...frame, lastClient: [event.clientX, event.clientY] };
  }

  #move(event) {
    const draft = this.#draft;
    if (!draft) return;
    const point = this.#picturePoint(event);
    if (draft.tool === "laser") {
      if (event.buttons) this.#sendLaser(point, this.#drawnFrame());
      return;
    }
    if (draft.tool === "polyline" || draft.tool === "polygon") return;
    if (draft.tool === "pen") {
      const [lx, ly] = draft.lastClient;
      if (Math.hypot(event.clientX - lx, event.clientY - ly) < MIN_SAMPLE_PX) return;
      if (draft.points.length < MAX_POINTS) draft.points.push(point);
      draft.lastClient = [event.clientX, event.clientY];
    } else {
      draft.points[1] = point; // the drag's other end
    }
    this.#requestDraw();
  }

  #up(event) {
    const draft = this.#draft;
    if (!draft || draft.tool === "polyline" || draft.tool === "polygon") return;
    this.#draft = null;
    if (draft.tool === "laser") return;
    if (draft.tool !== "pen" && draft.tool !== "point" && draft.tool !== "label") {
      draft.points[1] = this.#picturePoint(event);
    }
    this.submit(draft);
  }

  #finishPolyline(event) {
    const draft = this.#draft;
    if (!draft || (draft.tool !== "polyline" && draft.tool !== "polygon")) return;
    event.preventDefault();
    this.#draft = null;
    // A double-click adds its point twice (two pointerdowns): drop the repeat.
    const points = draft.points.filter((p, i, all) =>
      i === 0 || Math.hypot(p[0] - all[i - 1][0], p[1] - all[i - 1][1]) > 1e-4);
    this.submit({ ...draft, points });
  }

  /** Send a finished drawing; resolves with the anchored annotation. */
  async submit(draft) {
    let points = draft.points;
    let text = null;
    if (draft.tool === "ellipse") points = ellipseOutline(points[0], points[1] ?? points[0]);
    if (draft.tool === "label") text = (await this.#api.askText?.()) ?? "label";
    const request = { type: "annotate", producer_id: draft.producerId, rtp_timestamp: draft.rtp,
                      kind: KIND[draft.tool], points,
                      client_ref: `${draft.tool}-${Date.now()}` };
    if (text) request.text = text;
    this.pending++;
    const sentMs = performance.now();
    try {
      const reply = await this.#api.request(request);
      this.annotations.set(reply.annotation_id, reply);
      this.#undo.push({ annotation_id: reply.annotation_id, request });
      this.#redo = [];
      this.roundTripEnds.push({ annotation_id: reply.annotation_id,
                                sent_ms: performance.timeOrigin + sentMs,
                                replied_ms: performance.timeOrigin + performance.now() });
      return reply;
    } catch (error) {
      this.errors.push(String(error.message ?? error));
      throw error;
    } finally {
      this.pending--;
      this.#api.onChange();
      this.#requestDraw();
    }
  }

  /** Wall-clock ends (ms) of each drawing's round trip: bench/annotation_roundtrip.py
   * sets them beside the server's log. */
  roundTripEnds = [];

  /** Pointer-up to anchored reply, per drawing (ms). */
  get roundTrips() {
    return this.roundTripEnds.map((end) => end.replied_ms - end.sent_ms);
  }

  /** Choose the image to share; the next click on the picture hangs it there. */
  async chooseImage(file, title) {
    this.pendingImage = { ...(await encodeImage(file)), title: title || file.name.slice(0, 100) };
    this.tool = "image";
  }

  async #placeImage(point, frame) {
    const image = this.pendingImage;
    if (!image) throw new Error("choose an image to share first");
    const reply = await this.#api.request({
      type: "share_image", producer_id: frame.producerId, rtp_timestamp: frame.rtp, point,
      mime: image.mime, data: image.base64, title: image.title, client_ref: `image-${Date.now()}` });
    this.annotations.set(reply.annotation_id, reply);
    this.#undo.push({ annotation_id: reply.annotation_id, request: null });
    this.#api.onChange();
    this.#requestDraw();
  }

  #sendLaser(point, frame) {
    const now = performance.now();
    if (!frame || now - this.#laserSentMs < LASER_INTERVAL_MS) return;
    this.#laserSentMs = now;
    this.#api.send({ type: "laser", producer_id: frame.producerId, rtp_timestamp: frame.rtp, point });
  }

  // --- per displayed frame --------------------------------------------------

  #scheduleFrame() {
    const video = this.#api.video;
    if (!video.requestVideoFrameCallback) {
      setInterval(() => this.#drawForFrame(), 33);
      return;
    }
    const onFrame = (_now, metadata) => {
      if (!this.#frozen) {
        const track = this.#api.currentTrack();
        const offset = track?.rtp_timestamp_offset ?? 0;
        if (metadata.rtpTimestamp !== undefined) {
          const rtpPublisher = (metadata.rtpTimestamp - offset + 2 ** 32) % 2 ** 32;
          const pose = this.#api.poseFor(rtpPublisher);
          this.#lastFrame = { rtpPublisher: pose?.rtp_timestamp ?? rtpPublisher, pose };
        }
        this.#drawForFrame();
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  /**
   * What the overlay's pixels depend on from frame to frame. Everything else that
   * changes them (messages, pointer input and the draft it draws, submit)
   * redraws explicitly. Null while something animates on its own: a laser dot
   * fading, a shared picture still decoding. (A draft used to count: every
   * video frame of a pen stroke then redrew and re-uploaded the whole overlay,
   * about 4 ms of the main thread each in Chromium without a GPU, on top of
   * the redraws the pen's own moves ask for.)
   */
  #frameKey() {
    if (this.lasers.size) return null;
    for (const id of decodedImages.keys()) {
      if (this.annotations.has(id) && !decodedImages.get(id).complete) return null;
    }
    const video = this.#api.video;
    const pose = (this.#frozen ?? this.#lastFrame)?.pose;
    const size = this.#videoBox();
    return JSON.stringify([size.width, size.height, video.videoWidth, video.videoHeight,
                           this.#frozen?.rtpPublisher ?? null,
                           pose ? [pose.T_world_camera, pose.intrinsics] : null]);
  }

  /**
   * Per displayed frame: redraw only if the overlay would change. A camera held
   * still (the paramedic kneeling, the expert drawing) then leaves the canvas
   * untouched, so the compositor has no new overlay to upload and blend: without a
   * GPU, compositing is the page's largest CPU cost (bench/annotation_roundtrip.py).
   */
  #drawForFrame() {
    const key = this.#frameKey();
    if (key === null || key !== this.#drawnKey) {
      this.#draw();
      return;
    }
    const frame = this.#frozen ?? this.#lastFrame;
    this.lastProjection = { ...this.lastProjection, rtpTimestamp: frame?.rtpPublisher ?? null,
                            poseFrameId: frame?.pose?.frame_id ?? null, pose: frame?.pose ?? null };
  }

  /**
   * Redraw at the next animation frame, once however many events ask: a pen
   * sends 60-240 moves a second and messages come in bursts, while the screen
   * shows one picture a frame. Each immediate redraw was another canvas upload
   * and composite, on the main thread the next reply waits for.
   */
  #requestDraw() {
    if (this.#drawQueued) return;
    this.#drawQueued = true;
    requestAnimationFrame(() => {
      if (this.#drawQueued) this.#draw();
    });
  }

  #draw() {
    this.#drawQueued = false;
    const video = this.#api.video;
    const frame = this.#frozen ?? this.#lastFrame;
    const rect = contentRect(video, this.#videoBox());
    const pose = frame?.pose;
    const shapes = {};
    const marks = []; // (ctx) => draws one annotation, laser dot or the draft
    if (pose) {
      const scale = rect.width / pose.intrinsics.width;
      for (const annotation of this.annotations.values()) {
        const projected = projectPoints(annotation.points_world_m, pose.T_world_camera, pose.intrinsics);
        shapes[annotation.annotation_id] = projected.map((p) => [p.u, p.v]);
        const hidden = this.hidden.get(annotation.annotation_id);
        marks.push((ctx) => drawAnnotation(ctx, annotation, projected, rect, scale, pose.intrinsics, hidden));
      }
      const now = performance.now();
      for (const [author, laser] of this.lasers) {
        if (laser.until < now) { this.lasers.delete(author); continue; }
        const [p] = projectPoints([laser.point_world_m], pose.T_world_camera, pose.intrinsics);
        if (!p.inFront) continue;
        marks.push((ctx) => {
          ctx.fillStyle = laser.color;
          ctx.beginPath();
          ctx.arc(rect.x + (p.u + 0.5) * scale, rect.y + (p.v + 0.5) * scale, 7, 0, 2 * Math.PI);
          ctx.fill();
        });
      }
    }
    this.lastProjection = { rtpTimestamp: frame?.rtpPublisher ?? null,
                            poseFrameId: pose?.frame_id ?? null, pose: pose ?? null, shapes };
    const draft = this.#draft;
    if (draft?.points) marks.push((ctx) => drawDraft(ctx, draft, rect));
    // First where the marks fall, then a canvas just that big, placed there.
    const extent = new Extent(this.#ctx);
    for (const mark of marks) mark(extent);
    const size = this.#videoBox();
    const box = extent.box(size.width, size.height);
    this.#place(box);
    if (box) {
      const ctx = this.#ctx;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, box.width, box.height);
      ctx.translate(-box.x, -box.y);
      for (const mark of marks) mark(ctx);
    }
    this.#drawnKey = this.#frameKey();
  }

  #videoBox() {
    const video = this.#api.video;
    return this.#videoSize ?? { width: video.clientWidth, height: video.clientHeight };
  }

  /** Put the canvas over `box` (CSS px from the input layer's corner), or hide it. */
  #place(box) {
    const canvas = this.#canvas;
    // Nothing to show: at opacity 0 the compositor skips the layer.
    const empty = box === null;
    if (this.#emptyShown !== empty) {
      canvas.style.opacity = empty ? "0" : "";
      this.#emptyShown = empty;
    }
    if (empty) return;
    const old = this.#extent;
    if (old && old.x === box.x && old.y === box.y && old.width === box.width && old.height === box.height) return;
    this.#extent = box;
    if (canvas.width !== box.width || canvas.height !== box.height) {
      canvas.width = box.width;
      canvas.height = box.height;
    }
    canvas.style.left = `${box.x}px`;
    canvas.style.top = `${box.y}px`;
    canvas.style.width = `${box.width}px`;
    canvas.style.height = `${box.height}px`;
  }

  /** Where the drawing canvas lies over the input layer now (CSS px), or null when hidden. */
  get overlayBox() {
    return this.#emptyShown ? null : this.#extent;
  }
}

/**
 * Stands in for a 2D context while the marks are laid out: it draws nothing and
 * keeps the box every stroke, fill, text and picture touches (with the
 * line width around it), so that the real canvas can be that big.
 */
class Extent {
  strokeStyle = "";
  fillStyle = "";
  lineWidth = 1;
  lineJoin = "";
  lineCap = "";
  font = "10px sans-serif";
  #measure;
  #x0 = Infinity; #y0 = Infinity; #x1 = -Infinity; #y1 = -Infinity;

  constructor(measuringContext) { this.#measure = measuringContext; }

  #add(x0, y0, x1, y1) {
    const pad = this.lineWidth / 2 + 2;
    if (!(Number.isFinite(x0) && Number.isFinite(y0) && Number.isFinite(x1) && Number.isFinite(y1))) return;
    this.#x0 = Math.min(this.#x0, x0 - pad);
    this.#y0 = Math.min(this.#y0, y0 - pad);
    this.#x1 = Math.max(this.#x1, x1 + pad);
    this.#y1 = Math.max(this.#y1, y1 + pad);
  }

  moveTo(x, y) { this.#add(x, y, x, y); }
  lineTo(x, y) { this.#add(x, y, x, y); }
  arc(x, y, r) { this.#add(x - r, y - r, x + r, y + r); }
  strokeRect(x, y, w, h) { this.#add(x, y, x + w, y + h); }
  drawImage(image, x, y, w, h) { this.#add(x, y, x + w, y + h); }
  fillText(text, x, y) { this.strokeText(text, x, y); }
  strokeText(text, x, y) {
    this.#measure.font = this.font;
    const m = this.#measure.measureText(text);
    this.#add(x - (m.actualBoundingBoxLeft || 0), y - (m.actualBoundingBoxAscent || 20),
              x + m.width + (m.actualBoundingBoxRight > m.width ? m.actualBoundingBoxRight - m.width : 0),
              y + (m.actualBoundingBoxDescent || 6));
  }
  beginPath() {}
  closePath() {}
  stroke() {}
  fill() {}
  setLineDash() {}

  /**
   * On a grid of `step` CSS pixels inside 0..width x 0..height, or null if
   * nothing is drawn there. The grid keeps the canvas's size and place while a
   * pen stroke grows a pixel at a time: each change is a new backing store and
   * a layout.
   */
  box(width, height, step = 32) {
    const x0 = Math.max(0, Math.floor(this.#x0 / step) * step), y0 = Math.max(0, Math.floor(this.#y0 / step) * step);
    const x1 = Math.min(width, Math.ceil(this.#x1 / step) * step), y1 = Math.min(height, Math.ceil(this.#y1 / step) * step);
    return x1 > x0 && y1 > y0 ? { x: x0, y: y0, width: x1 - x0, height: y1 - y0 } : null;
  }
}

function ellipseOutline([u0, v0], [u1, v1]) {
  const cu = (u0 + u1) / 2, cv = (v0 + v1) / 2;
  const ru = Math.max(Math.abs(u1 - u0) / 2, 1e-3), rv = Math.max(Math.abs(v1 - v0) / 2, 1e-3);
  return Array.from({ length: ELLIPSE_POINTS }, (_, i) => {
    const a = (2 * Math.PI * i) / ELLIPSE_POINTS;
    return [cu + ru * Math.cos(a), cv + rv * Math.sin(a)];
  });
}

function toCss(p, rect, scale) {
  return [rect.x + (p.u + 0.5) * scale, rect.y + (p.v + 0.5) * scale];
}

function onScreen(p, intrinsics) {
  return p.inFront && p.u >= -0.5 && p.v >= -0.5 && p.u <= intrinsics.width - 0.5 && p.v <= intrinsics.height - 0.5;
}

function drawAnnotation(ctx, annotation, projected, rect, scale, intrinsics, hidden) {
  const color = annotation.color;
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 3;
  ctx.lineJoin = ctx.lineCap = "round";
  const visible = projected.map((p) => onScreen(p, intrinsics));
  if (!visible.some(Boolean)) {
    drawEdgeArrow(ctx, projected, rect, scale, intrinsics, color);
    return;
  }
  const closed = annotation.kind === "ellipse" || annotation.kind === "polygon";
  // Solid where the point is on the map and in view; dashed where a fallback
  // placed it (less certain) or the map hides it from this camera.
  const uncertain = annotation.anchoring.map((a, i) => a !== 0 || (hidden?.has(i) ?? false));
  const order = closed ? [...projected.keys(), 0] : [...projected.keys()];
  for (const dashed of [false, true]) {
    ctx.setLineDash(dashed ? [8, 6] : []);
    ctx.beginPath();
    for (let k = 1; k < order.length; k++) {
      const a = order[k - 1], b = order[k];
      if (!visible[a] || !visible[b] || (uncertain[a] || uncertain[b]) !== dashed) continue;
      ctx.moveTo(...toCss(projected[a], rect, scale));
      ctx.lineTo(...toCss(projected[b], rect, scale));
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);
  const last = projected[projected.length - 1];
  if (annotation.kind === "image" && visible[0]) {
    const [x, y] = toCss(projected[0], rect, scale);
    const picture = imageOf(annotation);
    if (picture.complete && picture.naturalWidth) {
      const width = 140, height = width * picture.naturalHeight / picture.naturalWidth;
      ctx.drawImage(picture, x - width / 2, y - height, width, height);
      ctx.strokeRect(x - width / 2, y - height, width, height);
    }
  }
  if (annotation.kind === "point" || annotation.kind === "label") {
    const [x, y] = toCss(projected[0], rect, scale);
    ctx.beginPath();
    ctx.arc(x, y, 6, 0, 2 * Math.PI);
    ctx.fill();
  }
  if (annotation.kind === "arrow" && projected.length >= 2 && visible[projected.length - 1]) {
    const [x1, y1] = toCss(last, rect, scale);
    let k = projected.length - 2;
    while (k > 0 && Math.hypot(...toCss(projected[k], rect, scale).map((c, j) => c - [x1, y1][j])) < 12) k--;
    const [x0, y0] = toCss(projected[k], rect, scale);
    const angle = Math.atan2(y1 - y0, x1 - x0);
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x1 - 16 * Math.cos(angle - 0.45), y1 - 16 * Math.sin(angle - 0.45));
    ctx.lineTo(x1 - 16 * Math.cos(angle + 0.45), y1 - 16 * Math.sin(angle + 0.45));
    ctx.closePath();
    ctx.fill();
  }
  const labels = [];
  if (annotation.text) labels.push(annotation.text);
  for (const m of annotation.measurements ?? []) {
    // A freehand stroke or an arrow is not a measurement; a polyline is.
    if (m.name === "perimeter") continue;
    if (m.name === "length" && !annotation.client_ref?.startsWith("polyline")) continue;
    labels.push(`${m.value.toFixed(m.unit === "deg" ? 0 : 1)} ± ${m.sigma.toFixed(1)} ${UNITS[m.unit] ?? m.unit}`);
  }
  if (labels.length) {
    const anchor = visible.lastIndexOf(true);
    const [x, y] = toCss(projected[anchor], rect, scale);
    ctx.font = "bold 15px sans-serif";
    const text = `${annotation.author_name}: ${labels.join(" · ")}`;
    ctx.lineWidth = 4;
    ctx.strokeStyle = "rgba(0,0,0,0.7)";
    ctx.strokeText(text, x + 8, y - 8);
    ctx.fillText(text, x + 8, y - 8);
  }
}

// An annotation entirely off the picture: an arrow at the edge pointing to it.
function drawEdgeArrow(ctx, projected, rect, scale, intrinsics, color) {
  const p = projected[0];
  const cx = intrinsics.width / 2, cy = intrinsics.height / 2;
  let dx = p.u - cx, dy = p.v - cy;
  if (!p.inFront) { dx = -dx; dy = -dy; }
  if (!Number.isFinite(dx) || !Number.isFinite(dy)) return;
  const t = Math.min(Math.abs((cx - 20) / (dx || 1e-9)), Math.abs((cy - 20) / (dy || 1e-9)));
  const [x, y] = toCss({ u: cx + dx * t, v: cy + dy * t }, rect, scale);
  const angle = Math.atan2(dy, dx);
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.moveTo(x + 14 * Math.cos(angle), y + 14 * Math.sin(angle));
  ctx.lineTo(x + 12 * Math.cos(angle + 2.5), y + 12 * Math.sin(angle + 2.5));
  ctx.lineTo(x + 12 * Math.cos(angle - 2.5), y + 12 * Math.sin(angle - 2.5));
  ctx.closePath();
  ctx.fill();
}

function drawDraft(ctx, draft, rect) {
  let points = draft.points;
  if (draft.tool === "ellipse" && points.length === 2) points = ellipseOutline(points[0], points[1]);
  ctx.strokeStyle = "rgba(255,255,255,0.9)";
  ctx.lineWidth = 2;
  ctx.setLineDash([4, 4]);
  ctx.beginPath();
  points.forEach(([u, v], i) => {
    const x = rect.x + u * rect.width, y = rect.y + v * rect.height;
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.setLineDash([]);
}

const decodedImages = new Map(); // annotation_id -> HTMLImageElement
function imageOf(annotation) {
  let picture = decodedImages.get(annotation.annotation_id);
  if (!picture) {
    picture = new Image();
    picture.src = `data:${annotation.image_mime};base64,${annotation.image_data}`;
    decodedImages.set(annotation.annotation_id, picture);
  }
  return picture;
}

// Shrink an image file until it fits one message (JPEG, longest side <= 640 px).
async function encodeImage(file) {
  const bitmap = await createImageBitmap(file);
  const longest = Math.max(bitmap.width, bitmap.height);
  for (const side of [640, 448, 320, 224, 160]) {
    const scale = Math.min(1, side / longest);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(8, Math.round(bitmap.width * scale));
    canvas.height = Math.max(8, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    for (const quality of [0.85, 0.7, 0.55, 0.4]) {
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
      if (blob.size > MAX_IMAGE_BYTES) continue;
      const bytes = new Uint8Array(await blob.arrayBuffer());
      let binary = "";
      for (const b of bytes) binary += String.fromCharCode(b);
      return { mime: "image/jpeg", base64: btoa(binary) };
    }
  }
  throw new Error("this image cannot be made small enough to share");
}
