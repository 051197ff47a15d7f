/*!
 * wsrelay.js as an ES module:
 *
 *   import wsrelay, { connect } from '/static/wsrelay.mjs';
 *
 * The client itself is the classic script beside this file (one source for both ways of
 * loading it); importing it runs it, and it defines `wsrelay` on the global object.
 */
import './wsrelay.js';

const wsrelay = globalThis.wsrelay;
// Share mode's SharedWorker runs the classic script: tell it where that is.
wsrelay.workerUrl = wsrelay.workerUrl || new URL('./wsrelay.js', import.meta.url).href;

export const { connect, Client, SharedClient, SUBPROTOCOL, TRANSPORTS } = wsrelay;
export default wsrelay;
