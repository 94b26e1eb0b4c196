export { ALPN, FLAG_END, Frame, FrameDecoder, FramePool, FrameType, HEADER_SIZE, MAX_PAYLOAD, PROTOCOL_VERSION, encodeFrame, encodeJson, frameHeader } from './frames.ts';
export {
  type FileRef, type HaveState, type Hello, MAX_GET_WINDOW, MAX_HAVE, MAX_LIST, PUT_WINDOW, REPLICATED_TYPES, type ReplicatedType,
  type Request, type Welcome, type WireError, contentAddressed, parseHello, parseJson, parseRequest, parseWireError,
} from './messages.ts';
