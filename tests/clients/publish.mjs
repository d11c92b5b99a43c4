// Publishes through the real @fanoutio/grip library (npm).
// Usage: node publish.mjs CONTROL_URI MODE CHANNEL CONTENT   (MODE: stream | response)
import { Publisher, HttpResponseFormat } from '@fanoutio/grip';

const [, , uri, mode, channel, content] = process.argv;
const publisher = new Publisher({ control_uri: uri });
if (mode === 'response') {
  await publisher.publishHttpResponse(channel, new HttpResponseFormat({ code: 202, reason: 'Accepted', headers: { 'X-Lib': 'node' }, body: content }));
} else {
  await publisher.publishHttpStream(channel, content);
}
console.log('ok');
