// What the browser tests and the browser benchmark share: the flags that start Debian's Chromium
// headless without network side traffic, and the frexamples photos with their eye centres read
// off by hand (in the files' own pixels, the eye on the left of the picture first).

export const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const PHOTOS = {
  personA1: { file: 'g01/01.jpg', size: [910, 1137], eyes: [[444, 214], [550, 212]] },
  personA2: { file: 'g01/02.jpg', size: [626, 1200], eyes: [[248, 369], [362, 378]] },
  personB1: { file: 'g02/01.jpg', size: [970, 2204], eyes: [[533, 323], [650, 346]] },
};
