// A frame's identity read back from its pixels: the browser half of
// clients/sdk/framecode.py. The top row of 80 black/white blocks carries a
// 32-bit frame counter, 32-bit capture time (Unix ms mod 2**32) and a
// CRC-16/CCITT (binascii.crc_hqx, init 0xFFFF) over those 8 bytes.

export const BLOCKS = 80;

/** CRC-16/CCITT-FALSE: polynomial 0x1021, MSB first, no final xor (Python's binascii.crc_hqx). */
export function crc16(bytes, crc = 0xffff) {
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) {
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
  }
  return crc;
}

/**
 * Decode the code from one RGBA pixel row taken through the middle of the
 * blocks (`rgba` as ImageData.data, `block` pixels per block).
 * Returns {frameId, captureMs} or null when absent or corrupt.
 */
export function decodeRow(rgba, block) {
  return decodeBlocks(block, (p) => 0.299 * rgba[p * 4] + 0.587 * rgba[p * 4 + 1]
                                    + 0.114 * rgba[p * 4 + 2]);
}

/** The same from one row of a decoded frame's luma (Y) plane, one byte a pixel. */
export function decodeLumaRow(luma, block) {
  return decodeBlocks(block, (p) => luma[p]);
}

function decodeBlocks(block, lumaAt) {
  const bytes = new Uint8Array(10);
  for (let i = 0; i < BLOCKS; i++) {
    // The block's centre: codecs blur its edges into the neighbours.
    if (lumaAt(i * block + (block >> 1)) > 128) bytes[i >> 3] |= 0x80 >> (i & 7);
  }
  if (crc16(bytes.subarray(0, 8)) !== ((bytes[8] << 8) | bytes[9])) return null;
  const view = new DataView(bytes.buffer);
  return { frameId: view.getUint32(0), captureMs: view.getUint32(4) };
}

/**
 * Reads the frame code of every frame a <video> presents, in
 * requestVideoFrameCallback, from the decoded frame's luma plane (or through a
 * canvas where the frame is not in memory). `onCode({frameId, captureMs, rtpTimestamp})`
 * is called for each frame whose code verifies.
 *
 * The pixels and the RTP timestamp must come from the same frame. Drawing the
 * <video> itself is not enough: under load Chromium moves on to the next
 * frame between the callback's metadata and the draw (measured here: pixels
 * of frame N+1 paired with frame N's timestamp). So the callback takes a
 * VideoFrame of the current picture and uses that frame's own metadata.
 */
/** Pixel formats whose first plane is luma, one byte a pixel. */
const LUMA_FIRST = new Set(["I420", "I420A", "I422", "I444", "NV12"]);
/** Frames in a row without a code before the reader backs off... */
const MISSES_BEFORE_BACKOFF = 60;
/** ...to trying one frame in this many, until a code reads again. */
const BACKOFF_EVERY = 30;

export class FrameCodeReader {
  #video;
  #onCode;
  #canvas = document.createElement("canvas");
  #context = this.#canvas.getContext("2d", { willReadFrequently: true });
  #handle = null;
  #missesInARow = 0;
  framesSeen = 0;
  framesTried = 0;
  framesRead = 0;
  /** Of those, read from the frame's luma plane rather than through the canvas. */
  framesReadFromPlanes = 0;

  constructor(video, onCode) {
    this.#video = video;
    this.#onCode = onCode;
  }

  start() {
    if (this.#handle === null) this.#schedule();
  }

  stop() {
    if (this.#handle !== null) this.#video.cancelVideoFrameCallback(this.#handle);
    this.#handle = null;
  }

  #schedule() {
    this.#handle = this.#video.requestVideoFrameCallback((now, metadata) => {
      this.#read(metadata);
      this.#schedule();
    });
  }

  #read(metadata) {
    this.framesSeen++;
    // A real headset paints no code: after two seconds of none, look once a
    // second, not on every frame (each look copies pixels back from the frame).
    if (this.#missesInARow >= MISSES_BEFORE_BACKOFF && this.framesSeen % BACKOFF_EVERY !== 0) return;
    this.framesTried++;
    let frame;
    try {
      frame = new VideoFrame(this.#video);
    } catch {
      this.#missesInARow++;
      return; // no picture yet (or a browser without WebCodecs)
    }
    const rtpTimestamp = rtpTimestampOf(frame, metadata);
    this.#code(frame).then((code) => {
      if (code === null) {
        this.#missesInARow++;
        return;
      }
      this.#missesInARow = 0;
      this.framesRead++;
      this.#onCode({ ...code, rtpTimestamp });
    }).finally(() => frame.close());
  }

  /**
   * The code painted in `frame`, or null. A decoded frame in memory gives one
   * row of its luma plane straight (copyTo: a few kB, no conversion); through
   * a canvas the whole frame is converted to RGB first, which took 4-5 ms of
   * the page's main thread per frame here without a GPU.
   */
  async #code(frame) {
    const { x, y, width, height } = frame.visibleRect ?? {};
    const block = Math.floor((width ?? 0) / BLOCKS);
    if (block < 2 || height < block) return null;
    if (LUMA_FIRST.has(frame.format)) {
      // Even coordinates: chroma planes are subsampled by two.
      const rect = { x, y: y + ((block >> 1) & ~1), width: width & ~1, height: 2 };
      try {
        const buffer = new Uint8Array(frame.allocationSize({ rect }));
        const [luma] = await frame.copyTo(buffer, { rect });
        const code = decodeLumaRow(buffer.subarray(luma.offset, luma.offset + rect.width), block);
        if (code !== null) this.framesReadFromPlanes++;
        return code;
      } catch {
        // Not readable this way after all: the canvas below can still read it.
      }
    }
    return this.#readPixels(frame, frame.displayWidth, frame.displayHeight);
  }

  #readPixels(image, width, height) {
    const block = Math.floor(width / BLOCKS);
    if (block < 2 || height < block) return null;
    if (this.#canvas.width !== width || this.#canvas.height !== block) {
      this.#canvas.width = width;
      this.#canvas.height = block;
    }
    // Only the band of blocks is drawn: reading back a whole 720p frame each
    // frame would cost more than the decode.
    this.#context.drawImage(image, 0, 0, width, block, 0, 0, width, block);
    const row = this.#context.getImageData(0, block >> 1, block * BLOCKS, 1).data;
    return decodeRow(row, block);
  }
}

/** The RTP timestamp of `frame`, or null where the browser cannot tell it. */
function rtpTimestampOf(frame, metadata) {
  const own = frame.metadata?.().rtpTimestamp;
  if (own !== undefined) return own;
  // Older Chromium: trust the callback's metadata only if it describes this frame.
  const sameFrame = Math.abs(frame.timestamp - metadata.mediaTime * 1e6) < 1000;
  return sameFrame ? metadata.rtpTimestamp ?? null : null;
}
