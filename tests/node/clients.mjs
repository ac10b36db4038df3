// The npm LLM SDKs and plain fetch, each streamed and not, against BASE (a fake
// upstream). Run by tests/test_node_clients.py inside `eval "$(halton-meter env)"`;
// prints one JSON line per call with what the client received.
//   node clients.mjs https://localhost:PORT
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import OpenAI from 'openai';
import https from 'node:https';

const base = process.argv[2];
const openai = new OpenAI({ apiKey: 'sk-proj-nodeSECRET0123456789', baseURL: `${base}/v1`, maxRetries: 0 });
const anthropic = new Anthropic({ apiKey: 'sk-ant-api03-nodeSECRET0123456789', baseURL: base, maxRetries: 0 });
const gemini = new GoogleGenAI({ apiKey: 'AIzaSyNodeSECRET0123456789', httpOptions: { baseUrl: base } });

const cases = {
  async 'openai-chat'() {
    const r = await openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    return { text: r.choices[0].message.content, usage: r.usage ?? null };
  },
  async 'openai-chat-stream'() {
    const stream = await openai.chat.completions.create({
      model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      usage = chunk.usage ?? usage;
    }
    return { text, usage };
  },
  async anthropic() {
    const r = await anthropic.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 1024, messages: [{ role: 'user', content: 'hi' }] });
    return { text: r.content[0].text, usage: r.usage };
  },
  async 'anthropic-stream'() {
    const stream = anthropic.messages.stream({ model: 'claude-opus-4-1', max_tokens: 1024, messages: [{ role: 'user', content: 'hi' }] });
    let text = '';
    stream.on('text', (t) => { text += t; });
    const final = await stream.finalMessage();
    return { text, usage: final.usage };
  },
  async gemini() {
    const r = await gemini.models.generateContent({ model: 'gemini-2.5-flash', contents: 'hi' });
    return { text: r.text, usage: r.usageMetadata };
  },
  async 'gemini-stream'() {
    const stream = await gemini.models.generateContentStream({ model: 'gemini-2.5-pro', contents: 'hi' });
    let text = '';
    let usage = null;
    for await (const chunk of stream) {
      text += chunk.text ?? '';
      usage = chunk.usageMetadata ?? usage;
    }
    return { text, usage };
  },
  async fetch() {
    const r = await fetch(`${base}/v1/responses`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sk-proj-nodeSECRET0123456789' },
      body: JSON.stringify({ model: 'gpt-4o', input: 'hi' }),
    });
    const body = await r.json();
    return { status: r.status, usage: body.usage };
  },
  async 'fetch-stream'() {
    const r = await fetch(`${base}/v1/responses`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sk-proj-nodeSECRET0123456789' },
      body: JSON.stringify({ model: 'o4-mini', input: 'hi', stream: true }),
    });
    const text = await r.text();
    return { status: r.status, events: (text.match(/^event:/gm) || []).length };
  },
  async 'https-request'() {
    // Node's https module on its default agent (what axios, got and node-fetch use)
    const body = JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    return await new Promise((resolve, reject) => {
      const req = https.request(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer sk-proj-nodeSECRET0123456789' },
      }, (res) => {
        let text = '';
        res.on('data', (d) => { text += d; });
        res.on('end', () => resolve({ status: res.statusCode, usage: JSON.parse(text).usage }));
      });
      req.on('error', reject);
      req.end(body);
    });
  },
};

const only = process.argv.slice(3);
for (const [name, run] of Object.entries(cases)) {
  if (only.length && !only.includes(name)) continue;
  try {
    console.log(JSON.stringify({ case: name, ok: true, ...(await run()) }));
  } catch (err) {
    console.log(JSON.stringify({ case: name, ok: false, error: String(err && (err.cause || err)) }));
  }
}
