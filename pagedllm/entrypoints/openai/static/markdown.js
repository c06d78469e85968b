// A small Markdown renderer for model output. It never parses text as HTML: every piece of
// the model's text reaches the page through textContent or a text node, so a reply holding
// "<script>" or "<img onerror=...>" shows those characters and runs nothing. Links keep
// only http(s) targets (no "javascript:" URLs).

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
// Inline spans, earliest match first: `code`, **bold**, *italic* / _italic_, [text](url).
const INLINE = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\(([^)\s]+)\)/;

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

export function safeUrl(url) {
  try {
    const parsed = new URL(url, document.baseURI);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

export function renderInline(text, parent) {
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (m.index > 0) parent.append(document.createTextNode(rest.slice(0, m.index)));
    if (m[1] !== undefined) parent.append(el("code", m[1]));
    else if (m[2] !== undefined) renderInline(m[2], parent.appendChild(el("strong")));
    else if (m[3] !== undefined || m[4] !== undefined) {
      renderInline(m[3] ?? m[4], parent.appendChild(el("em")));
    } else {
      const href = safeUrl(m[6]);
      if (href) {
        const a = el("a", m[5]);
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        parent.append(a);
      } else {
        parent.append(document.createTextNode(m[0]));
      }
    }
    rest = rest.slice(m.index + m[0].length);
  }
}

function codeBlock(lang, lines) {
  const pre = el("pre");
  if (lang) pre.append(el("span", lang));
  if (lang) pre.firstChild.className = "lang";
  const code = el("code", lines.join("\n"));
  if (lang) code.dataset.lang = lang;
  pre.append(code);
  return pre;
}

// Renders `text` into `container` (its old children replaced). A fence still open (a reply
// being streamed) renders as a code block up to the end.
export function renderMarkdown(text, container) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null;
  const flushParagraph = () => {
    if (paragraph.length) {
      const p = el("p");
      paragraph.forEach((line, i) => {
        if (i) p.append(el("br"));
        renderInline(line, p);
      });
      out.append(p);
    }
    paragraph = [];
  };
  const flushList = () => {
    if (list) out.append(list);
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flushParagraph();
      flushList();
      const body = [];
      for (i++; i < lines.length && lines[i].trim() !== fence[1]; i++) body.push(lines[i]);
      out.append(codeBlock(fence[2], body));
      continue;
    }
    let m;
    if ((m = HEADING.exec(line))) {
      flushParagraph();
      flushList();
      const h = el(`h${Math.min(m[1].length + 2, 6)}`);  // below the page's own headings
      renderInline(m[2], h);
      out.append(h);
    } else if ((m = BULLET.exec(line)) || (m = NUMBERED.exec(line))) {
      flushParagraph();
      const tag = BULLET.test(line) ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) {
        flushList();
        list = el(tag);
      }
      const item = el("li");
      renderInline(m[1], item);
      list.append(item);
    } else if ((m = QUOTE.exec(line))) {
      flushParagraph();
      flushList();
      const quote = el("blockquote");
      renderInline(m[1], quote);
      out.append(quote);
    } else if (!line.trim()) {
      flushParagraph();
      flushList();
    } else {
      flushList();
      paragraph.push(line);
    }
  }
  flushParagraph();
  flushList();
  container.replaceChildren(out);
}
