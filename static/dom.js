// The page's one way to make an element: text from a caller goes in through textContent,
// never as HTML. Shared by dashboard.js and the panels beside it (gpu.js, queue.js,
// residency.js).

export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}
