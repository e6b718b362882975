// A msgpack decoder, just enough for the server's data-channel messages
// (maps, arrays, strings, binary, numbers, nil, booleans). Extension types
// are not part of the GoldenHour protocol and are rejected.

const text = new TextDecoder();

/** Decode one msgpack value from an ArrayBuffer or typed array. */
export function decode(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;

  const take = (n) => {
    if (at + n > bytes.length) throw new RangeError("msgpack: truncated");
    const start = at;
    at += n;
    return start;
  };
  const str = (n) => text.decode(bytes.subarray(take(n), at));
  const bin = (n) => bytes.slice(take(n), at);
  const array = (n) => Array.from({ length: n }, () => value());
  const map = (n) => {
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = value();
      out[key] = value();
    }
    return out;
  };
  const u64 = (i) => Number(view.getBigUint64(i));
  const i64 = (i) => Number(view.getBigInt64(i));

  function value() {
    const type = bytes[take(1)];
    if (type <= 0x7f) return type;
    if (type >= 0xe0) return type - 0x100;
    if ((type & 0xf0) === 0x80) return map(type & 0x0f);
    if ((type & 0xf0) === 0x90) return array(type & 0x0f);
    if ((type & 0xe0) === 0xa0) return str(type & 0x1f);
    switch (type) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(view.getUint8(take(1)));
      case 0xc5: return bin(view.getUint16(take(2)));
      case 0xc6: return bin(view.getUint32(take(4)));
      case 0xca: return view.getFloat32(take(4));
      case 0xcb: return view.getFloat64(take(8));
      case 0xcc: return view.getUint8(take(1));
      case 0xcd: return view.getUint16(take(2));
      case 0xce: return view.getUint32(take(4));
      case 0xcf: return u64(take(8));
      case 0xd0: return view.getInt8(take(1));
      case 0xd1: return view.getInt16(take(2));
      case 0xd2: return view.getInt32(take(4));
      case 0xd3: return i64(take(8));
      case 0xd9: return str(view.getUint8(take(1)));
      case 0xda: return str(view.getUint16(take(2)));
      case 0xdb: return str(view.getUint32(take(4)));
      case 0xdc: return array(view.getUint16(take(2)));
      case 0xdd: return array(view.getUint32(take(4)));
      case 0xde: return map(view.getUint16(take(2)));
      case 0xdf: return map(view.getUint32(take(4)));
      default: throw new TypeError(`msgpack: unsupported type 0x${type.toString(16)}`);
    }
  }

  const result = value();
  if (at !== bytes.length) throw new RangeError("msgpack: trailing bytes");
  return result;
}
