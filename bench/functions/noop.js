// The bench's no-op Node.js handler (bench/runtimes.py): returns nothing, as handlers.discard.
'use strict';

exports.handler = async (event, context) => {};
