// ModalKit's admin: a copy button beside each short id (<span class="mk-id" data-copy>),
// so that the whole id the cell leaves out is one click away. No inline handlers: the
// buttons are made and listened to here, which a strict Content-Security-Policy allows.
'use strict';
{
    const copied = 'mk-copied';
    const svg = 'http://www.w3.org/2000/svg';

    function icon() {
        // Two overlapping sheets: the usual "copy" picture, drawn here rather than fetched.
        const picture = document.createElementNS(svg, 'svg');
        picture.setAttribute('viewBox', '0 0 16 16');
        picture.setAttribute('width', '12');
        picture.setAttribute('height', '12');
        picture.setAttribute('aria-hidden', 'true');
        for (const [x, y] of [[5, 1], [1, 5]]) {
            const sheet = document.createElementNS(svg, 'rect');
            for (const [name, value] of Object.entries({x, y, width: 10, height: 10, rx: 1.5})) {
                sheet.setAttribute(name, value);
            }
            picture.append(sheet);
        }
        return picture;
    }

    function writeText(text) {
        // The Clipboard API needs a secure context (HTTPS or localhost); elsewhere, the old way.
        if (navigator.clipboard && window.isSecureContext) {
            return navigator.clipboard.writeText(text);
        }
        const area = document.createElement('textarea');
        area.value = text;
        area.setAttribute('readonly', '');
        area.style.position = 'fixed';
        area.style.opacity = '0';
        document.body.append(area);
        area.select();
        const done = document.execCommand('copy');
        area.remove();
        return done ? Promise.resolve() : Promise.reject(new Error('copy refused'));
    }

    function addButton(id) {
        const text = id.dataset.copy;
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'mk-copy';
        button.dataset.copy = text;
        button.title = 'Copy the full id ' + text;
        button.setAttribute('aria-label', 'Copy the full id ' + text);
        button.append(icon());
        // Beside the link when the id is one (a list's first column), never inside it.
        (id.closest('a') || id).after(button);
    }

    document.addEventListener('click', (event) => {
        const button = event.target.closest('button.mk-copy');
        if (!button) {
            return;
        }
        event.preventDefault();
        const label = button.getAttribute('aria-label');
        const say = (what) => {
            button.title = what;
            button.setAttribute('aria-label', what);
        };
        writeText(button.dataset.copy).then(() => {
            say('Copied');
            button.classList.add(copied);
            setTimeout(() => {
                say(label);
                button.classList.remove(copied);
            }, 1500);
        }, () => say('Could not copy: select the id on its page'));
    });

    function ready() {
        document.querySelectorAll('.mk-id[data-copy]').forEach(addButton);
    }

    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', ready);
    } else {
        ready();
    }
}
